"""Calibrate to a microscope: estimate imaging conditions from a real stack.

:func:`calibrate` reads a stack in chunks, leaves out bad frames (all-zero or
saturated), and measures, on a sample of the good frames (pairs of consecutive
frames, evenly spaced, at most :data:`SAMPLE_PIXELS` pixels):

- **PSF width and photons per spot**: isolated spots are fitted one by one
  (batched Levenberg-Marquardt) with a pixel-integrated Gaussian on a flat
  local background; the PSF width is the in-focus width of the fitted widths.
- **gain** (photon transfer): the variance of a pixel is
  ``F² g (mu - offset) + read²`` (ADU²) where ``mu`` is its mean, ``g`` the
  ADU per photoelectron and ``F²`` the excess noise factor (2 for EMCCD, else
  1). The background gives it without any model: per pixel, the mean and the
  variance of the difference of consecutive frames (blind to drift) less its
  4 neighbours' mean (blind to light that varies smoothly over the frame:
  tails and haze of blinking emitters), over the frames where the pixel is
  far from any spot. With dark frames (per-pixel
  offset and read variance known) that is a ratio of sums over pixels; without
  them, pixels binned by mean (gradients, haze) give points of a line. Spot-fit
  residuals binned by model value give points from the background up to the spot
  peaks; they count with a systematic floor (:data:`SPOT_SYSTEMATIC`), since
  anything the spot model does not explain (neighbours, sCMOS pixel gain) adds
  variance.
- **offset**: the per-pixel mean of dark frames when given; else the mean
  background less the background in photoelectrons, which the third central
  moment of the background fluctuations gives (shot noise is skewed, read noise
  is not), weighed with the line's intercept and a typical read noise of the
  camera kind (:data:`READ_NOISE_E`).
- **background**: the mean over pixels of the background (frames outside spots).
- **density**: spots detected per frame (a rough count: crowded spots merge).

Photons are *detected* photoelectrons (quantum efficiency included): the
conditions for :func:`defcon.simulate.simulate` set ``quantum_efficiency=1``.
"""

import math
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import erf
from scipy.stats import gaussian_kde, spearmanr

from . import conditions as C
from .envelope import FRAME_PX, estimate_psf_sigma
from .errors import CalibrationError, ParameterError, UnsupportedFileError
from .files import atomic_path, read_json, write_json
from .scene import CAMERAS, EmpiricalPSF
from .tiffio import TiffStack

#: Pixels of the frame sample measured (frames x height x width).
SAMPLE_PIXELS = 2**23
#: At most this many isolated spots are fitted (evenly over the sample).
MAX_SPOTS = 5000
#: Isolated spots needed to fit the PSF width and photons.
MIN_SPOTS = 20
#: Below this many fitted spots or this peak signal-to-noise ratio (see
#: :func:`defcon.conditions.peak_snr`), the result carries a warning: the gain
#: (and with it photons and background) is poorly constrained (docs/performance.md).
TRUSTED_SPOTS, TRUSTED_SNR = 100, 5.0
#: Above this relative standard error of the gain, the result carries a warning.
TRUSTED_GAIN_ERROR = 0.1
#: Photons per emitter come from the frames with at most these percentiles of
#: spots per frame, the first that hold :data:`MIN_SPOTS` sustained spots
#: (the sparsest quarter, against the sparser half, took the photons of two
#: simulated clustered stacks from +306 % to +9 % and +19 % to +9 %).
SPARSE_PERCENTILES = (25, 50)
#: Photons per spot less than this many times the detection limit carry a
#: warning: only the brightest emitters were detected, the estimate runs high.
TRUSTED_LIMIT_RATIO = 2.0
#: Above this rank correlation of spot width and photons, the result carries a
#: warning: spots hold several emitters (clusters, crowding) and photons run high.
TRUSTED_WIDTH_CORRELATION = 0.6
#: Bit depths told apart; the smallest holding the brightest pixel is reported
#: (a camera that never saturated may have more bits).
BIT_DEPTHS = (12, 14, 16)
#: Typical read noise (electrons rms, referred to the photoelectrons: after the
#: EM gain on EMCCD) per camera kind and its spread (of the variance, e²), used
#: for the offset without dark frames.
READ_NOISE_E = {"ccd": 8.0, "scmos": 1.6, "emccd": 0.5}
READ_VARIANCE_SPREAD_E2 = {"ccd": 50.0, "scmos": 2.0, "emccd": 2.0}
#: Excess noise factor squared of the EM register.
EXCESS_NOISE = {"ccd": 1.0, "scmos": 1.0, "emccd": 2.0}
#: Third cumulant of the ADU per photoelectron, in units of ``g³``: 1 for
#: Poisson electrons, 6 for an EM register (exponential output per electron).
SKEW_FACTOR = {"ccd": 1.0, "scmos": 1.0, "emccd": 6.0}
#: Relative systematic error of the spot-residual variances (model misfits).
SPOT_SYSTEMATIC = 0.05
#: Fitted spots wider or narrower than the in-focus width by more than this
#: fraction are left out (unresolved pairs, misfits, far out of focus).
WIDTH_TOLERANCE = 0.3
#: Detection threshold, in noise standard deviations of the smoothed frame.
DETECT_Z = 5.0
#: Pairs of consecutive sparse frames needed to measure the background noise from them alone.
MIN_PAIRS = 16
#: Samples per pixel of the measured PSF (``psf_kernel``).
PSF_OVERSAMPLING = 4
#: Frames with more than this fraction of pixels at the saturation level are bad.
SATURATED_FRACTION = 1e-3
#: Relative spread (log standard deviation) of the conditions ``simulate --like``
#: draws around the calibrated values.
LIKE_SPREAD = {"psf_sigma_px": 0.05, "photon_rate": 0.15, "background": 0.15}


def calibrate(stack, pixel_size_nm=None, dark=None, camera="ccd", seed=0):
    """Estimate the imaging conditions of an SMLM stack.

    Parameters
    ----------
    stack : str, Path or ndarray of shape (n, H, W)
        A TIFF stack (read in chunks) or frames in ADU.
    pixel_size_nm : float, optional
        Image pixel size; by default from the TIFF's ImageJ or OME metadata,
        else 100 nm (``pixel_size_source`` says which).
    dark : str, Path or ndarray of shape (m, H, W), optional
        Dark frames (shutter closed) of the same camera settings: they give
        the offset and the read noise (per pixel).
    camera : {'ccd', 'emccd', 'scmos'}
        Camera kind: EMCCD doubles the shot-noise variance (excess noise).
    seed : int
        Seed of the conditions in the result's ``conditions``.

    Returns
    -------
    dict
        JSON-serialisable: frame size, ``bit_depth``, ``bad_frames`` (0-based),
        ``pixel_size_nm``, ``offset_adu``, ``adu_per_electron`` (and
        ``gain_sources``: the estimates combined, with their standard errors),
        ``read_noise_adu``, ``background_electrons``, ``psf_sigma_px`` (and its
        spread), ``photons_median``, ``photons_full_frame`` (the median
        brightness of emitters on for a whole exposure: spots seen in the
        frames before and after too) and ``photons_log_spread`` (detected
        photoelectrons per spot), ``detection_limit_photons`` (the dimmest
        spot detected), ``width_photons_correlation`` (rank correlation of
        fitted widths and photons: near 0 for single emitters),
        ``emitters_per_frame`` (5th, 95th percentiles per 64 x 64 pixels),
        ``n_spots``, ``peak_snr``, ``warnings`` (a list of str: few spots, dim
        spots, photons near the detection limit, merged spots, uncertain
        gain) and ``conditions``: the :func:`defcon.simulate.simulate`
        keywords of a stack like this one. Private arrays for
        :func:`write_report` are under ``"_arrays"``.

    Raises
    ------
    CalibrationError
        No good frames, or fewer than :data:`MIN_SPOTS` isolated spots.
    """
    if camera not in CAMERAS:
        raise ParameterError(f"camera: expected one of {CAMERAS}, got {camera!r}")
    name = str(stack) if isinstance(stack, (str, Path)) else "array"
    frames, pairs, info = _sample(stack, name)
    dark_maps = None
    if dark is not None:
        dark_name = str(dark) if isinstance(dark, (str, Path)) else "dark"
        dark_maps = _dark_maps(*_sample(dark, dark_name)[:2])
    sigma0, _ = estimate_psf_sigma(frames)
    sigma0 = 1.5 if not math.isfinite(sigma0) else float(np.clip(sigma0, 0.6, 4.0))
    background, flat, counts, spots, sustained, quiet, limit_adu = _spots(frames, pairs, sigma0)
    if len(spots) < MIN_SPOTS:
        raise CalibrationError(
            f"{name}: only {len(spots)} isolated spots found (need {MIN_SPOTS}); "
            "cannot fit the PSF width and photons (too dim, too crowded or too few frames?)"
        )
    clip = _clips_tails(camera, dark_maps)
    stats = _temporal(frames, _sparse_pairs(pairs, counts), quiet, clip)
    del frames, quiet
    params, mu, resid2, ok, data = _fit_spots(flat, spots, sigma0)
    del flat
    if ok.any():
        ok &= np.abs(params[:, 2] / _in_focus(params[ok, 2]) - 1) < WIDTH_TOLERANCE
    params, mu, resid2, data, sustained = params[ok], mu[ok], resid2[ok], data[ok], sustained[ok]
    # Spots whose residuals exceed the noise model (4 standard deviations of
    # their mean chi²) are misfits (neighbours): the gain is estimated again
    # without them. When that would leave out most spots (noise not Gaussian),
    # 4 robust standard deviations of the spots' own ratios instead.
    good = np.ones(len(params), bool)
    for _ in range(3):
        if np.count_nonzero(good) < MIN_SPOTS:
            break
        noise = _noise_model(mu[good], resid2[good], stats, dark_maps, camera, clip)
        slope, offset, read_var = noise["slope"], noise["offset"], noise["read_var"]
        ratio = resid2.mean(axis=1) / np.maximum(slope * (mu - offset) + read_var, 1e-12).mean(1)
        good = ratio < 1 + 4 * math.sqrt(2 / mu.shape[1])
        if np.count_nonzero(good) < len(good) / 2:
            centre = np.median(ratio)
            good = ratio < centre + 4 * 1.4826 * np.median(np.abs(ratio - centre))
    if np.count_nonzero(good) < MIN_SPOTS:
        raise CalibrationError(
            f"{name}: only {np.count_nonzero(good)} of {len(spots)} isolated spots fit a "
            f"Gaussian spot within the noise (need {MIN_SPOTS}); cannot fit the PSF width "
            "and photons"
        )
    if not slope > 1e-9 or offset < 0:
        raise CalibrationError(
            f"{name}: the noise does not grow with the signal as a camera's does (photon-transfer "
            f"slope {slope:.3g} ADU, offset {offset:.1f} ADU): record dark frames with the same "
            "camera settings and pass them with --dark"
        )
    params, sustained = params[good], sustained[good]
    gain = slope / EXCESS_NOISE[camera]  # ADU per photoelectron
    sigmas, photons = params[:, 2], params[:, 3] / gain
    # Emitters on for a whole frame, in the sparsest frames that hold enough of
    # them: fewer spots there hold several emitters.
    per_spot = counts[spots[ok][good][:, 0]]
    masks = [sustained & (per_spot <= np.percentile(counts, q)) for q in SPARSE_PERCENTILES]
    full_frame = next(
        (photons[m] for m in [*masks, sustained] if np.count_nonzero(m) >= MIN_SPOTS), photons
    )
    background_adu = _mean_background(background, stats)
    bg_electrons = max((background_adu - offset) / gain, 0.0)
    per_frame = counts * FRAME_PX / (info["height"] * info["width"])
    pixel_nm, source = _pixel_size(stack, pixel_size_nm)
    result = {
        **info,
        "camera": camera,
        "pixel_size_nm": pixel_nm,
        "pixel_size_source": source,
        "offset_adu": offset,
        "offset_source": "noise skew, assumed read noise" if dark_maps is None else "dark frames",
        "adu_per_electron": gain,
        "gain_sources": noise["sources"],
        "read_noise_adu": math.sqrt(max(read_var, 0.0)),
        "background_adu": background_adu,
        "background_electrons": bg_electrons,
        "psf_sigma_px": _in_focus(sigmas),
        "psf_sigma_iqr_px": [float(q) for q in np.percentile(sigmas, [25, 75])],
        "photons_median": float(np.median(photons)),
        "photons_full_frame": float(np.median(full_frame)),
        "photons_log_spread": float(np.std(np.log(np.clip(photons, 1.0, None)))),
        "detection_limit_photons": limit_adu / gain,
        "width_photons_correlation": float(spearmanr(sigmas, photons)[0]),
        "emitters_per_frame": [float(q) for q in np.percentile(per_frame, [5, 95])],
        "n_spots": int(len(params)),
    }
    result["peak_snr"] = C.peak_snr(
        result["photons_full_frame"],
        result["psf_sigma_px"],
        bg_electrons,
        result["read_noise_adu"] / gain,
    )
    result["warnings"] = [
        text
        for bad, text in (
            (result["n_spots"] < TRUSTED_SPOTS, f"only {result['n_spots']} spots fitted"),
            (result["peak_snr"] < TRUSTED_SNR, f"dim spots (peak SNR {result['peak_snr']:.1f})"),
            (
                result["photons_full_frame"]
                < TRUSTED_LIMIT_RATIO * result["detection_limit_photons"],
                "photons near the detection limit (only the brightest spots were seen): "
                "photons per emitter read high",
            ),
            (
                result["width_photons_correlation"] > TRUSTED_WIDTH_CORRELATION,
                "brighter spots are wider (correlation "
                f"{result['width_photons_correlation']:.2f}): spots hold several emitters "
                "(clusters or crowding), photons per emitter and PSF width read high",
            ),
            (
                noise["error"] > TRUSTED_GAIN_ERROR * slope,
                f"gain uncertain (standard error {100 * noise['error'] / slope:.0f} %): "
                "dark frames (--dark) pin the offset and read noise",
            ),
        )
        if bad
    ]
    result["psf_kernel"] = _empirical_psf(data[good], params, result["psf_sigma_px"]).to_dict()
    result["conditions"] = _conditions(result, seed)
    result["_arrays"] = {
        "sigmas": sigmas,
        "photons": photons,
        "sustained": sustained,
        "background": background,
        "transfer": _transfer_points(mu[good], resid2[good], stats, clip),
        "examples": _examples(data[good], mu[good], params[:, 3]),
    }
    return result


def _in_focus(sigmas):
    """In-focus PSF width from fitted spot widths (n,), pixels: their most common value.

    Out-of-focus spots are wider, never narrower, so the widths pile up at the
    in-focus width with a tail above: the mode, not the median.
    """
    if len(sigmas) < 2 or np.ptp(sigmas) == 0:
        return float(np.median(sigmas))
    grid = np.linspace(sigmas.min(), sigmas.max(), 512)
    return float(grid[np.argmax(gaussian_kde(sigmas)(grid))])


def _sample(stack, name):
    """Good frames (k, H, W) float32, consecutive pairs among them (m, 2) and stack facts.

    Frames come in pairs of consecutive good frames, evenly spaced, within
    :data:`SAMPLE_PIXELS` (all good frames when they fit); ``pairs`` holds
    indices into the sample of frames that follow each other in the stack.
    """
    if isinstance(stack, (str, Path)):
        with TiffStack(stack) as tif:
            return _sample_chunks(tif.shape, tif.dtype, tif.chunks, name)
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise UnsupportedFileError(f"{name}: expected frames of shape (n, H, W), got {stack.shape}")
    return _sample_chunks(stack.shape, stack.dtype, lambda k: _array_chunks(stack, k), name)


def _array_chunks(stack, k):
    for start in range(0, len(stack), k):
        yield start, stack[start : start + k]


def _sample_chunks(shape, dtype, chunks, name):
    n, h, w = shape
    chunk = max(1, 2**22 // (h * w))
    peak = np.zeros(n)
    for start, frames in chunks(chunk):  # pass 1: per-frame maxima give the bit depth
        peak[start : start + len(frames)] = frames.reshape(len(frames), -1).max(axis=1)
    top = float(peak.max()) if n else 0.0
    bits = next((b for b in BIT_DEPTHS if top <= 2**b - 1), None)
    if dtype.kind == "f" or bits is None:
        bits = None
    saturation = 2**bits - 1 if bits else math.inf
    want = max(2, SAMPLE_PIXELS // (h * w))
    wanted = np.ones(n, bool)
    if n > want:
        wanted[:] = False
        starts = np.linspace(0, n - 2, want // 2).round().astype(int)
        wanted[starts] = wanted[starts + 1] = True
    bad, kept, keep = [], [], []
    for start, frames in chunks(chunk):  # pass 2: bad frames out, the sample kept
        for i, frame in enumerate(frames, start):
            saturated = np.count_nonzero(frame >= saturation) > SATURATED_FRACTION * h * w
            if not frame.any() or saturated:
                bad.append(i)
            elif wanted[i]:
                kept.append(i)
                keep.append(frame.astype(np.float32))
    if not keep:
        raise CalibrationError(f"{name}: no usable frames (all are empty or saturated)")
    follows = np.flatnonzero(np.diff(kept) == 1)
    info = {"frames": n, "height": h, "width": w, "bit_depth": bits, "bad_frames": bad}
    return np.stack(keep), np.column_stack([follows, follows + 1]), info


def _dark_maps(frames, pairs):
    """Offset (H, W) and read variance (H, W) per pixel of dark frames (k, H, W), ADU.

    The variance is half the mean squared difference of consecutive frames
    (blind to drift and to the fixed pattern); None with a single dark frame.
    """
    offset = frames.mean(axis=0, dtype=float)
    if len(pairs):
        diff = frames[pairs[:, 0]] - frames[pairs[:, 1]]
        return {"offset": offset, "read_var": (diff.astype(float) ** 2).mean(axis=0) / 2}
    if len(frames) > 1:
        return {"offset": offset, "read_var": frames.var(axis=0, ddof=1, dtype=float)}
    return {"offset": offset, "read_var": None}


def _spots(frames, pairs, sigma):
    """Background map, frames less fixed pattern, spots per frame, isolated spots, quiet pixels.

    Returns ``background`` (H, W) ADU, ``frames`` (k, H, W) with the
    pixel-to-pixel offset pattern removed (a new array), ``counts`` (k,) spots
    per frame, ``spots`` (n, 3) int: frame, row, column of isolated spots,
    ``sustained`` (n,) bool: spots seen in the frames before and after theirs
    too (see :func:`_sustained`), ``quiet`` (k, H, W) bool: pixels far
    from any spot (faint ones included), and the detection limit: the
    integrated ADU of the dimmest spot of width ``sigma`` detected.
    """
    median = np.median(frames, axis=0)
    # Spots stand out of a difference of Gaussians whatever the background does
    # (ramps of density, gradients, bleaching). Its noise is that of the sparsest
    # frames: in crowded ones, overlapping spots would raise the threshold.
    smooth = _difference_of_gaussians(frames, sigma)
    centred = smooth - np.median(smooth, axis=(1, 2), keepdims=True)
    per_frame = 1.4826 * np.median(np.abs(centred), axis=(1, 2))
    noise = float(np.percentile(per_frame, 10))
    peaks = (smooth == ndimage.maximum_filter(smooth, (1, 5, 5))) & (smooth > DETECT_Z * noise)
    # Background: the mean outside spots (a disc of 3 sigma around every peak).
    near = ndimage.binary_dilation(peaks, _disc(3 * sigma)[None])
    n_out = (~near).sum(axis=0)
    background = np.where(
        n_out > 0, np.where(near, 0, frames).sum(axis=0) / np.maximum(n_out, 1), median
    )
    # Fixed pattern (sCMOS offsets) less its smooth part: removed before fitting,
    # except where spots sit in most frames (fiducials: no background seen there).
    pattern = background - ndimage.gaussian_filter(background, 5.0)
    flat = frames - np.where(n_out >= len(frames) / 2, pattern, 0.0).astype(np.float32)
    f, r, c = np.nonzero(peaks)
    counts = np.bincount(f, minlength=len(frames))
    half = int(math.ceil(3 * sigma))
    # Isolated: inside the frame with its window, no other peak (at a lower
    # threshold) within 2 windows' half-widths.
    faint = (smooth == ndimage.maximum_filter(smooth, (1, 3, 3))) & (smooth > 3 * noise)
    crowd = ndimage.uniform_filter(faint.astype(np.float32), (1, 4 * half + 1, 4 * half + 1))
    alone = crowd[f, r, c] * (4 * half + 1) ** 2 < 1.5
    h, w = frames.shape[1:]
    inside = (r >= half) & (r < h - half) & (c >= half) & (c < w - half)
    # Fiducials (a spot at one place in many frames) are not fluorophores.
    often = ndimage.maximum_filter(peaks.sum(axis=0), 3) > len(frames) / 4
    keep = alone & inside & ~often[r, c]
    spots = np.column_stack([f, r, c])[keep]
    # Far from any spot: from the spots seen in the filtered frames, and from
    # any pixel brighter than its usual background.
    quiet = _quiet(frames, sigma) & ~ndimage.binary_dilation(faint, _disc(3 * sigma + 1)[None])
    spots = spots[:: max(1, math.ceil(len(spots) / MAX_SPOTS))]
    # A spot centred on a pixel, integrated ADU per unit of its filtered peak.
    half = int(math.ceil(6 * sigma))
    unit = np.zeros((1, 2 * half + 1, 2 * half + 1), np.float32)
    unit[0, half, half] = 1.0
    unit = ndimage.gaussian_filter(unit, (0, sigma, sigma))  # a spot of 1 ADU
    limit = DETECT_Z * noise / float(_difference_of_gaussians(unit, sigma).max())
    return background, flat, counts, spots, _sustained(spots, faint, pairs), quiet, limit


def _difference_of_gaussians(frames, sigma):
    """Frames (k, H, W) smoothed at ``sigma`` less smoothed at ``3 sigma``: spots stand out."""
    smooth = ndimage.gaussian_filter(frames, (0, sigma, sigma))
    smooth -= ndimage.gaussian_filter(frames, (0, 3 * sigma, 3 * sigma))
    return smooth


def _sustained(spots, peaks, pairs, radius=1.5):
    """Spots (n,) bool with a peak within ``radius`` px in the frames before and after theirs.

    An emitter seen in three consecutive frames was on for the whole middle
    one (short blinks aside): those spots give the full-frame brightness,
    where the others mix in emitters that switched on or off during the exposure.

    Parameters
    ----------
    spots : ndarray of shape (n, 3)
        Frame, row, column.
    peaks : ndarray of shape (k, H, W), bool
    pairs : ndarray of shape (m, 2)
        Indices of consecutive frames.
    """
    before, after = np.full(len(peaks), -1), np.full(len(peaks), -1)
    before[pairs[:, 1]], after[pairs[:, 0]] = pairs[:, 0], pairs[:, 1]
    f, r, c = spots.T
    sustained = (before[f] >= 0) & (after[f] >= 0)
    near = ndimage.binary_dilation(peaks, _disc(radius)[None])
    for neighbour in (before, after):
        sustained[sustained] &= near[neighbour[f[sustained]], r[sustained], c[sustained]]
    return sustained


def _quiet(frames, sigma, z=3.0):
    """Pixels far from any spot, faint ones included: (k, H, W) bool.

    Spots are local maxima of the smoothed frames ``z`` noise standard
    deviations above the background. Both come per pixel from the low
    percentiles over time (5th and 20th), which stay background where spots
    sit in most frames (crowded stacks, clusters).
    """
    smooth = ndimage.gaussian_filter(frames, (0, sigma, sigma))
    low, high = np.percentile(smooth, [5, 20], axis=0)
    noise = np.maximum((high - low) / (1.645 - 0.842), 1e-6)
    level = high + 0.842 * noise
    return ~ndimage.binary_dilation(smooth > level + z * noise, _disc(3 * sigma + 1)[None])


def _disc(radius):
    n = int(math.ceil(radius))
    y, x = np.mgrid[-n : n + 1, -n : n + 1]
    return x * x + y * y <= radius * radius


def _model(p, grid):
    """Pixel-integrated Gaussian on a flat background and its Jacobian.

    ``p`` (n, 5): x, y, sigma, amplitude (ADU), background (ADU), window
    coordinates; ``grid`` (m,) pixel-centre offsets. Returns model (n, m, m)
    and Jacobian (n, m, m, 5).
    """
    x, y, s, a, b = (p[:, i, None] for i in range(5))
    lo, hi = grid[None] - 0.5, grid[None] + 0.5
    root2 = math.sqrt(2.0)

    def axis(c):
        u0, u1 = (lo - c) / (root2 * s), (hi - c) / (root2 * s)
        g0, g1 = np.exp(-(u0**2)), np.exp(-(u1**2))
        e = 0.5 * (erf(u1) - erf(u0))
        de_dc = -(g1 - g0) / (math.sqrt(2 * math.pi) * s)
        de_ds = -((hi - c) * g1 - (lo - c) * g0) / (math.sqrt(2 * math.pi) * s * s)
        return e, de_dc, de_ds

    ex, dex, dsx = axis(x)
    ey, dey, dsy = axis(y)
    shape = ey[:, :, None] * ex[:, None, :]
    a3 = a[:, :, None]
    jac = np.stack(
        [
            a3 * ey[:, :, None] * dex[:, None, :],
            a3 * dey[:, :, None] * ex[:, None, :],
            a3 * (dsy[:, :, None] * ex[:, None, :] + ey[:, :, None] * dsx[:, None, :]),
            shape,
            np.ones_like(shape),
        ],
        axis=-1,
    )
    return a3 * shape + b[:, :, None], jac


def _fit_spots(frames, spots, sigma0, iterations=30):
    """Least-squares fits of the spots (n, 3) in frames (k, H, W).

    Returns ``params`` (n, 5) (x, y, sigma, amplitude, background; x and y
    relative to the window centre), model values and squared residuals
    (n, m * m) corrected for the leverage of the 5 fitted parameters, a mask (n,) of
    converged fits of plausible width, and the data (n, m * m).
    """
    half = int(math.ceil(3 * sigma0))
    grid = np.arange(-half, half + 1, dtype=float)
    rows = spots[:, 1, None] + grid.astype(int)
    cols = spots[:, 2, None] + grid.astype(int)
    data = frames[spots[:, 0, None, None], rows[:, :, None], cols[:, None, :]].astype(float)
    edge = np.concatenate([data[:, 0], data[:, -1], data[:, 1:-1, 0], data[:, 1:-1, -1]], axis=1)
    b0 = np.median(edge, axis=1)
    a0 = np.clip(data.sum(axis=(1, 2)) - b0 * data[0].size, 1.0, None)
    p = np.column_stack([np.zeros(len(data)), np.zeros(len(data)), np.full(len(data), sigma0)])
    p = np.column_stack([p, a0, b0])
    damping = np.full(len(data), 1e-3)
    y = data.reshape(len(data), -1)
    model, jac = _model(p, grid)
    cost = ((y - model.reshape(len(y), -1)) ** 2).sum(axis=1)
    for _ in range(iterations):
        j = jac.reshape(len(y), -1, 5)
        r = y - model.reshape(len(y), -1)
        jtj = np.einsum("nmi,nmj->nij", j, j)
        jtr = np.einsum("nmi,nm->ni", j, r)
        diag = jtj[:, np.arange(5), np.arange(5)]
        step = np.linalg.solve(
            jtj + (damping[:, None, None] * diag[:, :, None] + 1e-9) * np.eye(5), jtr[..., None]
        )[..., 0]
        trial = p + step
        trial[:, 2] = np.clip(trial[:, 2], 0.3, 3 * half)
        trial[:, 3] = np.clip(trial[:, 3], 1e-3, None)
        t_model, t_jac = _model(trial, grid)
        t_cost = ((y - t_model.reshape(len(y), -1)) ** 2).sum(axis=1)
        better = t_cost < cost
        p[better], model[better], jac[better], cost[better] = (
            trial[better],
            t_model[better],
            t_jac[better],
            t_cost[better],
        )
        damping = np.where(better, damping / 3, damping * 4)
    mu = model.reshape(len(y), -1)
    # A fit takes up part of each pixel's noise: E[r²] = (1 - leverage) var.
    j = jac.reshape(len(y), -1, 5)
    inverse = np.linalg.pinv(np.einsum("nmi,nmj->nij", j, j))
    leverage = np.einsum("nmi,nij,nmj->nm", j, inverse, j)
    resid2 = (y - mu) ** 2 / np.clip(1 - leverage, 0.05, None)
    ok = (
        (np.abs(p[:, 0]) < 1.5)
        & (np.abs(p[:, 1]) < 1.5)
        & (p[:, 2] > 0.4)
        & (p[:, 2] < half)
        & (p[:, 3] > 0)
    )
    return p, mu, resid2, ok, y


#: Difference of a pixel and its 4 neighbours' mean: white noise passes, light
#: that varies smoothly over the frame does not.
HIGH_PASS = np.array([[0, -0.25, 0], [-0.25, 1, -0.25], [0, -0.25, 0]], np.float32)
#: What :data:`HIGH_PASS` makes of independent per-pixel variances ``v``:
#: ``sum(HIGH_PASS² * v)``, normalised to 1 for equal variances.
HIGH_PASS_VARIANCE = HIGH_PASS**2 / float((HIGH_PASS**2).sum())


def _clips_tails(camera, dark_maps):
    """Whether squared noise beyond 4 Gaussian standard deviations is left out as misfit light.

    Faint emitters and misfits add rare large squares that the clip removes.
    An EM register's output is not Gaussian at a few photoelectrons per pixel:
    much of its variance lies in a long tail, and the clip read EMCCD gains
    5-18 % low on dim backgrounds. With dark frames the EMCCD noise is therefore
    not clipped (12 of 12 simulated EMCCD stacks then within 5 %, 10 of 12
    clipped); without them the line through background and spots needs the
    clip more (unclipped, 2 of 12 left the 5 %: +10 and +15 %) and keeps it.
    """
    return camera != "emccd" or dark_maps is None


def _temporal(frames, pairs, quiet, clip):
    """Per-pixel temporal statistics of the background, where it is far from spots.

    Parameters
    ----------
    frames : ndarray of shape (k, H, W)
    pairs : ndarray of shape (m, 2)
        Indices of consecutive frames.
    quiet : ndarray of shape (k, H, W), bool
    clip : bool
        Leave out squares beyond 4 standard deviations (:func:`_clips_tails`).

    Returns
    -------
    dict
        ``pairs`` (H, W): pairs where the pixel and its 4 neighbours are quiet
        in both frames; ``mean`` (H, W) ADU over the frames where it is quiet;
        ``var`` (H, W) ADU², the variance of one frame's noise from the mean
        square of the pair differences high-passed by :data:`HIGH_PASS` (a
        variance map ``v`` reads as :func:`_as_high_passed` of ``v``);
        ``skew`` (H, W) ADU³, the third central moment over those frames.
    """
    a, b = pairs.T
    cross = ndimage.generate_binary_structure(2, 1)[None]
    quiet_pairs = quiet[a] & quiet[b]
    both = ndimage.binary_erosion(quiet_pairs, cross, border_value=0)
    diff = ndimage.convolve(frames[a] - frames[b], HIGH_PASS[None], mode="constant")
    squares = np.where(both, diff.astype(float) ** 2 * (0.5 / (HIGH_PASS**2).sum()), np.nan)
    del diff
    if clip:
        # Light of spots too faint to be seen still reaches some pairs.
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels never quiet: NaN
            both &= ~(squares > _four_sigma_squared(np.nanmedian(squares, axis=0)))
    n = both.sum(axis=0).astype(float)
    var = np.where(both, squares, 0.0).sum(axis=0)
    used = np.zeros(frames.shape, bool)  # neighbours' means count too
    used[a] |= quiet_pairs
    used[b] |= quiet_pairs
    count = np.maximum(used.sum(axis=0), 1)
    mean = np.where(used, frames, 0.0).sum(axis=0, dtype=float) / count
    skew = np.zeros(frames.shape[1:])
    for lo in range(0, len(frames), 256):
        part = frames[lo : lo + 256] - mean
        skew += np.where(used[lo : lo + 256], part**3, 0.0).sum(axis=0)
    return {"pairs": n, "mean": mean, "var": var / np.maximum(n, 1), "skew": skew / count}


def _as_high_passed(variance):
    """A per-pixel variance map (H, W) as :func:`_temporal`'s ``var`` reads it."""
    return ndimage.convolve(variance, HIGH_PASS_VARIANCE, mode="nearest")


def _sparse_pairs(pairs, counts):
    """The pairs (m, 2) of frames that both hold few spots (a quarter of the frames' counts).

    Light of the spots around reaches every pixel of a crowded frame (wide
    PSFs, clusters) and adds to its temporal variance; sparse frames show the
    background alone. All pairs when too few are sparse.
    """
    sparse = counts <= np.percentile(counts, 25)
    chosen = pairs[sparse[pairs].all(axis=1)]
    return chosen if len(chosen) >= MIN_PAIRS else pairs


def _mean_background(background, stats):
    """Mean background over the frame (ADU): the temporal mean, else ``background``."""
    return float(np.where(stats["pairs"] > 0, stats["mean"], background).mean())


def _four_sigma_squared(median_square):
    """(4 sigma)² of a Gaussian whose squares have the median ``median_square``."""
    return 16 * median_square / 0.4549


def _noise_model(mu, resid2, stats, dark_maps, camera, clip):
    """Photon transfer: ``var = slope (mu - offset) + read_var`` (ADU) from background and spots.

    Parameters
    ----------
    mu, resid2 : ndarray of shape (n, m)
        Model values and squared residuals (ADU²) of fitted spots.
    stats : dict
        Temporal background statistics (:func:`_temporal`).
    dark_maps : dict or None
        Per-pixel offset and read variance (:func:`_dark_maps`).
    camera : str
    clip : bool
        Leave out residuals beyond 4 standard deviations (:func:`_clips_tails`).

    Returns
    -------
    dict
        ``slope`` (F² g), ``offset``, ``read_var`` and ``sources``: for each
        estimate of the gain combined, ``[ADU per photoelectron, standard error]``.
    """
    excess = EXCESS_NOISE[camera]
    quiet = stats["pairs"] >= max(4.0, 0.1 * stats["pairs"].max())
    x, v, v_var = _spot_points(mu, resid2, clip)
    v_var = _checked_against_background(x, v, v_var, stats, quiet)
    if dark_maps is not None and dark_maps["read_var"] is not None:
        offset = float(dark_maps["offset"].mean())
        read_var = float(dark_maps["read_var"].mean())
        estimates = {
            "background": _dark_slope(stats, quiet, dark_maps),
            "spots": _slope_through(x - offset, v - read_var, v_var),
        }
        slope, se = _combine(estimates.values())
    else:
        bx, bv, bv_var = _background_points(stats, quiet)
        # The background bins share one systematic error of their level
        # (emitter light left in): correlated, it tilts no line through them.
        shared = SPOT_SYSTEMATIC * np.concatenate([bv, np.zeros_like(v)])
        covariance = np.diag(np.concatenate([bv_var, v_var])) + np.outer(shared, shared)
        points = np.concatenate([bx, x]), np.concatenate([bv, v])
        (slope, intercept), cov = _line(*points, covariance)
        se = math.sqrt(cov[0, 0])
        estimates = {"background and spots": (slope, se)}
        slope = max(slope, 1e-9)
        if dark_maps is not None:
            offset = float(dark_maps["offset"].mean())
        else:
            offset = _offset(stats, quiet, slope, intercept, cov, camera)
        read_var = intercept + slope * offset
    sources = {k: [float(s / excess), float(e / excess)] for k, (s, e) in estimates.items()}
    return {"slope": slope, "error": se, "offset": offset, "read_var": read_var, "sources": sources}


def _combine(estimates):
    """Inverse-variance mean ``(value, standard error)`` of ``(value, standard error)`` pairs."""
    values, errors = np.array([e for e in estimates if np.isfinite(e[1]) and e[1] > 0]).T
    weights = errors**-2.0
    return float((weights * values).sum() / weights.sum()), float(weights.sum() ** -0.5)


def _spot_points(mu, resid2, clip, n_bins=24):
    """Photon-transfer points of spot-fit residuals binned by model value (quantiles).

    Returns the bins' mean model value (b,) and mean squared residual (b,)
    (4-sigma clipped when ``clip``: misfits out), ADU and ADU², and the
    variance of each mean (b,): its statistical variance plus :data:`SPOT_SYSTEMATIC`.
    """
    mu, resid2 = mu.ravel(), resid2.ravel()
    edges = np.unique(np.quantile(mu, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, mu, side="right") - 1, 0, len(edges) - 2)
    xs, vs, var = [], [], []
    for k in range(len(edges) - 1):
        r = resid2[which == k]
        if r.size < 20:
            continue
        if clip:
            r = r[r < _four_sigma_squared(np.median(r))]
        xs.append(mu[which == k].mean())
        vs.append(r.mean())
        var.append(r.mean() ** 2 * (2 / r.size + SPOT_SYSTEMATIC**2))
    return np.array(xs), np.array(vs), np.maximum(np.array(var), 1e-12)


def _checked_against_background(x, v, v_var, stats, quiet):
    """Spot points' variances (b,), raised by how far their lowest bins miss the background's.

    Near the background level, spot residuals should have the background's
    temporal variance; when they have more (neighbours, misfits in crowded
    frames), every spot point is trusted that much less.
    """
    if not quiet.any():
        return v_var
    level, variance = stats["mean"][quiet].mean(), stats["var"][quiet].mean()
    low = np.argsort(np.abs(x - level))[:3]
    miss = abs(float(np.median(v[low])) / max(variance, 1e-12) - 1)
    return v_var + (miss * v) ** 2


def _background_points(stats, quiet, n_bins=8):
    """Photon-transfer points of background pixels binned by their (smoothed) mean.

    Binning by the mean smoothed over neighbours keeps a pixel's own noise
    (and sCMOS offset) out of its bin. Returns the bins' mean (b,) ADU, mean
    variance (b,) ADU² and the variance of that mean (b,).
    """
    if np.count_nonzero(quiet) < 20:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    weight = ndimage.gaussian_filter(quiet.astype(float), 2.0)
    level = ndimage.gaussian_filter(np.where(quiet, stats["mean"], 0.0), 2.0)
    level = (level / np.maximum(weight, 1e-12))[quiet]
    means, variances = stats["mean"][quiet], stats["var"][quiet]
    edges = np.unique(np.quantile(level, np.linspace(0, 1, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, level, side="right") - 1, 0, len(edges) - 2)
    xs, vs, var = [], [], []
    for k in range(len(edges) - 1):
        inside = which == k
        if np.count_nonzero(inside) < 20:
            continue
        xs.append(means[inside].mean())
        vs.append(variances[inside].mean())
        var.append(variances[inside].var() / np.count_nonzero(inside))
    return np.array(xs), np.array(vs), np.maximum(np.array(var), 1e-12)


def _line(x, v, covariance):
    """Line ``v = slope x + intercept`` by generalised least squares.

    ``covariance`` (b, b) of the points ``v`` (b,). Returns ``(slope,
    intercept)`` and their covariance (2, 2), scaled up by the reduced chi²
    when the points scatter more than ``covariance`` says.
    """
    inverse = np.linalg.inv(covariance)
    design = np.column_stack([x, np.ones_like(x)])
    normal = design.T @ inverse @ design
    coef = np.linalg.solve(normal, design.T @ inverse @ v)
    resid = v - design @ coef
    chi2 = float(resid @ inverse @ resid) / max(len(x) - 2, 1)
    return coef, np.linalg.inv(normal) * max(chi2, 1.0)


def _slope_through(x, v, v_var):
    """Weighted slope ``(value, standard error)`` of ``v = slope x`` (a line through 0)."""
    weights = 1.0 / v_var
    sxx = float((weights * x * x).sum())
    slope = float((weights * x * v).sum()) / sxx
    chi2 = float((weights * (v - slope * x) ** 2).sum()) / max(len(x) - 1, 1)
    return slope, math.sqrt(max(chi2, 1.0) / sxx)


def _dark_slope(stats, quiet, dark_maps, n_groups=16):
    """Photon-transfer slope ``(value, standard error)`` of background pixels with dark maps.

    The ratio of the sums over quiet pixels of ``var - read_var`` and of
    ``mean - offset`` (per pixel: blind to sCMOS offset and read-noise maps);
    its standard error from the spread of the ratio over interleaved groups of pixels.
    """
    excess = (stats["var"] - _as_high_passed(dark_maps["read_var"]))[quiet]
    signal = _as_high_passed(stats["mean"] - dark_maps["offset"])[quiet]
    if signal.size < 20 * n_groups or signal.sum() <= 0:
        return 0.0, math.inf
    group = np.arange(signal.size) % n_groups
    sums = np.array([[excess[group == k].sum(), signal[group == k].sum()] for k in range(n_groups)])
    ratios = sums[:, 0] / np.where(sums[:, 1] > 0, sums[:, 1], np.nan)
    se = np.nanstd(ratios, ddof=1) / math.sqrt(n_groups)
    return float(excess.sum() / signal.sum()), float(se) if np.isfinite(se) else math.inf


def _offset(stats, quiet, slope, intercept, cov, camera):
    """Offset (ADU) without dark frames: two estimates weighed by their standard errors.

    The skew of the background fluctuations (third central moment ``K g³ B``
    for ``B`` photoelectrons; read noise adds none) gives the background in
    photoelectrons, and the offset is the mean less ``g B``. The line's
    intercept ``read_var - slope offset`` gives it with a typical read noise.
    """
    gain = slope / EXCESS_NOISE[camera]
    skew, means = stats["skew"][quiet], stats["mean"][quiet]
    estimates = []
    if skew.size > 1:
        per_skew = 1.0 / (SKEW_FACTOR[camera] * gain**2)  # ADU of offset per ADU³ of skew
        value = float(means.mean() - skew.mean() * per_skew)
        # The skew's own scatter, and the gain's error (the offset moves as 1 / g²).
        se_gain = 2 * abs(skew.mean()) * per_skew * math.sqrt(cov[0, 0]) / slope
        se_skew = skew.std() / math.sqrt(skew.size) * per_skew
        estimates.append((value, float(math.hypot(se_skew, se_gain))))
    read_var = (READ_NOISE_E[camera] * gain) ** 2
    spread = READ_VARIANCE_SPREAD_E2[camera] * gain**2
    estimates.append(((read_var - intercept) / slope, math.sqrt(spread**2 + cov[1, 1]) / slope))
    return _combine(estimates)[0]


def _pixel_size(stack, given):
    """``(nm, source)``: the given size, else the TIFF's ImageJ/OME metadata, else 100 nm."""
    if given is not None:
        return float(given), "given"
    if isinstance(stack, (str, Path)):
        nm = tiff_pixel_size_nm(stack)
        if nm is not None:
            return nm, "TIFF metadata"
    return 100.0, "default (no metadata; use --pixel-size)"


_UNIT_NM = {"nm": 1.0, "nanometer": 1.0, "µm": 1e3, "um": 1e3, "micron": 1e3, "micrometer": 1e3}
_UNIT_NM.update({"\\u00B5m": 1e3, "mm": 1e6, "m": 1e9, "cm": 1e7})


def tiff_pixel_size_nm(path):
    """Pixel size (nm) in a TIFF's OME (PhysicalSizeX) or ImageJ (XResolution, unit) metadata.

    Returns None when the file has none or its unit is unknown.
    """
    import re

    import tifffile

    with tifffile.TiffFile(path) as tif:
        if tif.ome_metadata:
            size = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tif.ome_metadata)
            factor = _UNIT_NM.get(unit.group(1) if unit else "µm")
            if size and factor:
                return float(size.group(1)) * factor
        unit = (tif.imagej_metadata or {}).get("unit")
        tag = tif.pages.first.tags.get("XResolution")
        factor = _UNIT_NM.get(str(unit).lower()) if unit else None
        if tag is not None and factor:
            num, den = tag.value
            if num > 0 and den > 0 and num != den:  # 1/1 is "no calibration"
                return factor * den / num
    return None


def _conditions(cal, seed):
    """Central :func:`defcon.simulate.simulate` keywords of a calibrated stack."""
    camera = cal["camera"]
    em_gain = 100.0 if camera == "emccd" else None
    # Electrons per ADU after the EM register, as the simulator counts them.
    adu_gain = (em_gain or 1.0) / cal["adu_per_electron"]
    # Spots merge in crowded frames, so the measured density is a floor: the
    # sweep's top is drawn between twice it and the training range's top.
    top = 2 * cal["emitters_per_frame"][1]
    pixel = (cal["pixel_size_nm"],) * 2
    ranges = {
        "pixel_size_nm": (*pixel, "uniform"),
        "emitters_per_frame": (top, max(top, C.TRAINING_RANGES["emitters_per_frame"][1]), "sqrt"),
    }
    return {
        # What a stack does not show (photophysics, layout, density sweep) as drawn for training.
        **C.sample_conditions(seed, ranges),
        "psf_sigma_px": cal["psf_sigma_px"],
        "defocus_nm": 0.0,
        "camera_pixel_nm": cal["pixel_size_nm"] * 100.0,
        "magnification": 100.0,
        "photon_rate": cal["photons_full_frame"],
        # Partly-on emitters widen the measured spread: at most the training range's.
        "photon_spread": min(cal["photons_log_spread"], C.TRAINING_RANGES["photon_spread"][1]),
        "background": cal["background_electrons"],
        "background_gradient": 0.0,
        "background_haze": 0.0,
        "camera": camera,
        "em_gain": em_gain,
        "read_noise": cal["read_noise_adu"] * adu_gain,
        "quantum_efficiency": 1.0,
        "adu_gain": adu_gain,
        "baseline": cal["offset_adu"],
        "bit_depth": cal["bit_depth"] or 16,
        "psf_kernel": cal.get("psf_kernel"),
        "brightness_threshold": C.THRESHOLD_FRACTION * cal["photons_full_frame"],
    }


def like_conditions(calibration, seed):
    """Conditions of a stack like a calibrated one, drawn around its values.

    Parameters
    ----------
    calibration : dict
        As returned by :func:`calibrate` or read by :func:`read_calibration`.
    seed : int

    Returns
    -------
    dict
        A conditions dict (see :mod:`defcon.conditions`); the PSF width, photons
        and background vary log-normally by :data:`LIKE_SPREAD`, the unmeasured
        photophysics and layout are drawn by :func:`defcon.conditions.sample_conditions`.
    """
    rng = np.random.default_rng(seed)
    drawn = _conditions(calibration, seed)
    for key, spread in LIKE_SPREAD.items():
        drawn[key] = float(drawn[key] * math.exp(rng.normal(0.0, spread)))
    drawn["brightness_threshold"] = C.THRESHOLD_FRACTION * drawn["photon_rate"]
    return drawn


def write_calibration(calibration, path):
    """Write a calibration as JSON (atomically), without its private arrays."""
    write_json({k: v for k, v in calibration.items() if not k.startswith("_")}, path)


def read_calibration(path):
    """Read a file written by :func:`write_calibration`.

    Raises
    ------
    CalibrationError
        Not a JSON object with a ``conditions`` object.
    """
    calibration = read_json(path, "calibration file", CalibrationError)
    if not isinstance(calibration, dict) or not isinstance(calibration.get("conditions"), dict):
        raise CalibrationError(f"{path}: not a calibration file (written by defcon calibrate)")
    return calibration


def _empirical_psf(data, params, sigma):
    """The pixel-integrated PSF measured from fitted spots, sampled every 1/4 pixel.

    Each window pixel's value less the spot's background, over the spot's
    photons (ADU), is binned by the offset of the pixel's centre from the fitted
    position; bins average amplitude-weighted (bright spots count most), are
    smoothed by a quarter pixel and normalised.

    Parameters
    ----------
    data : ndarray of shape (n, m * m)
        Spot windows, ADU.
    params : ndarray of shape (n, 5)
        Fitted x, y (from the window centre), sigma, amplitude and background.
    sigma : float
        The calibrated PSF width, pixels.

    Returns
    -------
    defcon.scene.EmpiricalPSF
    """
    s = PSF_OVERSAMPLING
    side = int(round(math.sqrt(data.shape[1])))
    half = side // 2
    grid = np.arange(-half, half + 1, dtype=float)
    size = 2 * half * s + 1
    rows = np.rint((grid[None, :, None] - params[:, 1, None, None]) * s).astype(int) + half * s
    cols = np.rint((grid[None, None, :] - params[:, 0, None, None]) * s).astype(int) + half * s
    rows, cols = np.broadcast_arrays(rows, cols)
    signal = data.reshape(-1, side, side) - params[:, 4, None, None]
    weight = np.broadcast_to(params[:, 3, None, None], signal.shape)
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    index = rows[inside] * size + cols[inside]
    sums = np.bincount(index, signal[inside], size * size).reshape(size, size)
    weights = np.bincount(index, weight[inside], size * size).reshape(size, size)
    samples = ndimage.gaussian_filter(sums, s / 4) / np.maximum(
        ndimage.gaussian_filter(weights, s / 4), 1e-12
    )
    samples = np.clip(samples, 0.0, None)
    return EmpiricalPSF(samples * s * s / samples.sum(), s, sigma)


def _transfer_points(mu, resid2, stats, clip):
    """Photon-transfer points for the report: ``{'spots': (x, v), 'background': (x, v)}``."""
    x, v, _ = _spot_points(mu, resid2, clip)
    quiet = stats["pairs"] >= 4
    return {"spots": (x, v), "background": (stats["mean"][quiet], stats["var"][quiet])}


def _examples(data, mu, amplitudes, n=4):
    """Data and model windows (n, m, m) of spots at evenly spaced brightness ranks."""
    side = int(round(math.sqrt(data.shape[1])))
    order = np.argsort(amplitudes)
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).astype(int)]
    return data[pick].reshape(-1, side, side), mu[pick].reshape(-1, side, side)


def write_report(calibration, path):
    """Write a one-page PNG: widths, photons, background, photon transfer and example fits."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c, arrays = calibration, calibration["_arrays"]
    fig = Figure(figsize=(12, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1)
    ax1, ax2, ax3 = top.subplots(1, 3)
    ax1.hist(arrays["sigmas"], bins=40, color="0.6")
    ax1.axvline(c["psf_sigma_px"], color="C3")
    ax1.set(xlabel="fitted spot sigma (px)", ylabel="spots")
    ax1.set_title(f"PSF sigma {c['psf_sigma_px']:.2f} px ({c['n_spots']} spots)")
    ax2.hist(np.log10(np.clip(arrays["photons"], 1, None)), bins=40, color="0.6")
    ax2.axvline(math.log10(max(c["photons_median"], 1)), color="C0", label="median")
    ax2.axvline(
        math.log10(max(c["photons_full_frame"], 1)),
        color="C3",
        label="whole-frame emitters (median)",
    )
    ax2.legend(fontsize=8)
    ax2.set(xlabel="log10 photoelectrons per spot", ylabel="spots")
    ax2.set_title(f"{c['photons_full_frame']:.0f} photoelectrons per spot")
    image = ax3.imshow(arrays["background"], cmap="gray")
    top.colorbar(image, ax=ax3, label="ADU")
    ax3.set_title(f"background {c['background_electrons']:.1f} e- per pixel", fontsize=10)
    ax4, ax5 = bottom.subplots(1, 2, width_ratios=(1, 2))
    _plot_transfer(ax4, c, arrays["transfer"])
    _plot_examples(ax5, *arrays["examples"])
    if c["warnings"]:
        fig.suptitle("warnings: " + "; ".join(c["warnings"]), color="C3", fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _plot_transfer(ax, c, points):
    """Variance against signal above the offset (ADU): background pixels, spot bins, the line."""
    offset = c["offset_adu"]
    bx, bv = points["background"]
    step = max(1, len(bx) // 3000)
    ax.plot(bx[::step] - offset, bv[::step], ".", ms=2, color="0.7", label="background pixels")
    sx, sv = points["spots"]
    ax.plot(sx - offset, sv, "o", ms=4, color="C0", label="spot fits (binned)")
    x = np.geomspace(max(np.min(bx - offset, initial=sx.min() - offset), 1.0), sx.max() - offset)
    slope = c["adu_per_electron"] * EXCESS_NOISE[c["camera"]]
    ax.plot(x, slope * x + c["read_noise_adu"] ** 2, color="C3", label="fitted")
    ax.set(xscale="log", yscale="log", xlabel="mean - offset (ADU)", ylabel="variance (ADU²)")
    ax.set_title(f"gain {c['adu_per_electron']:.3g} ADU/e-, offset {offset:.1f} ADU", fontsize=10)
    ax.legend(fontsize=8)


def _plot_examples(ax, data, model):
    """Spot windows from dim to bright (each scaled to its data's range): data over model."""
    low = data.min(axis=(1, 2), keepdims=True)
    span = np.maximum(data.max(axis=(1, 2), keepdims=True) - low, 1e-12)
    rows = [np.concatenate(list((images - low) / span), axis=1) for images in (data, model)]
    ax.imshow(np.concatenate(rows, axis=0), cmap="magma")
    ax.set_title("example fits, dim to bright: data (top), fitted Gaussian (bottom)", fontsize=10)
    ax.set_axis_off()
