"""Training envelopes: where a model's counts can be trusted, and a cheap check of inputs.

A model records the imaging conditions it was trained on (PSF width, emitters
per frame) as its *envelope*. While predicting, :class:`EnvelopeCheck` estimates
the PSF width of each chunk of input frames from isolated spots
(:func:`estimate_psf_sigma`) and the density of each frame from the predicted
count, and flags the frames that fall outside the envelope.
"""

import dataclasses
import functools
import math

import numpy as np
import scipy.fft

#: Densities are quoted per 64 x 64 pixels whatever the frame size.
FRAME_PX = 64 * 64
#: Relative tolerance on the PSF width before a chunk is flagged: the estimate
#: scatters by a few %, and crowded, dim frames on structured background read
#: up to ~20 % wide (docs/performance.md), so chunks at the top of the range
#: in those conditions can be flagged.
SIGMA_TOLERANCE = 0.1


@dataclasses.dataclass(frozen=True)
class Envelope:
    """Imaging conditions where a model's counts hold: within its training ranges.

    Usually the training ranges themselves; a model trained on wider ones
    may keep a narrower envelope where its counts were not good enough
    (``defcon-broad-2026c``: trained on PSF sigma up to 4 px, envelope 0.7-2.5 px).

    Parameters
    ----------
    psf_sigma_px : tuple of float
        In-focus PSF standard deviation, pixels: (low, high).
    emitters_per_frame : tuple of float
        Emitters per 64 x 64 pixels: (low, high).
    description : str
        Free text for people (training data, where the model comes from).
    """

    psf_sigma_px: tuple = (0.7, 2.5)
    emitters_per_frame: tuple = (0.0, 360.0)
    description: str = ""

    def to_dict(self):
        """JSON-serialisable form (stored in a model's config)."""
        return {
            "psf_sigma_px": list(self.psf_sigma_px),
            "emitters_per_frame": list(self.emitters_per_frame),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; None for None."""
        if values is None:
            return None
        return cls(
            tuple(float(v) for v in values["psf_sigma_px"]),
            tuple(float(v) for v in values["emitters_per_frame"]),
            str(values.get("description", "")),
        )

    def psf_flag(self, sigma):
        """'psf_narrow', 'psf_wide' or '' for an estimated PSF width (NaN: '')."""
        low, high = self.psf_sigma_px
        if not math.isfinite(sigma):
            return ""
        if sigma < low * (1 - SIGMA_TOLERANCE):
            return "psf_narrow"
        if sigma > high * (1 + SIGMA_TOLERANCE):
            return "psf_wide"
        return ""

    def density_flags(self, counts, frame_pixels):
        """'too_dense' or '' per frame, from counts (k,) in frames of ``frame_pixels``."""
        per_frame = np.asarray(counts, np.float64) * FRAME_PX / frame_pixels
        return np.where(per_frame > self.emitters_per_frame[1], "too_dense", "")


#: Scales of the blob detector, pixels (a factor sqrt 2 apart).
SCALES = 0.5 * np.sqrt(2.0) ** np.arange(8)
#: A chunk needs this many spots for a PSF estimate.
MIN_SPOTS = 8
#: The check stops measuring a chunk's frames once it has this many spots.
ENOUGH_SPOTS = 40
#: Detection threshold of a spot, in noise standard deviations of its response.
MIN_Z = 8.0


def estimate_psf_sigma(frames, min_z=MIN_Z):
    """Estimate the PSF standard deviation of raw frames from their spots' scale.

    The scale-normalised Laplacian of Gaussian ``-s² LoG_s * I`` of a Gaussian
    spot of variance ``v`` peaks at ``s² = v`` (Lindeberg's blob detector), and
    ignores smooth background (gradients, haze). Frames are filtered at
    :data:`SCALES` (in Fourier space, all frames and scales at once, after
    mirror padding); every local maximum in scale and space (3 scales x 5 x 5
    pixels) whose response exceeds ``min_z`` standard deviations of that
    scale's response to the frame's pixel noise is a spot (the filters
    integrate to zero, so flat background responds 0), and its scale is found
    by a parabola through the responses around the best (in log scale). The
    median spot variance, less the pixel's 1/12 px², gives sigma.

    Parameters
    ----------
    frames : ndarray of shape (k, H, W) or (k, H, W, 1)
        Raw frames (any offset or gain), at least 9 x 9 pixels.
    min_z : float
        Detection threshold, in standard deviations of each response's noise
        (white pixel noise, measured from neighbouring-pixel differences).

    Returns
    -------
    sigma : float
        PSF standard deviation, pixels (NaN with fewer than ``MIN_SPOTS`` spots).
    n_spots : int
    """
    return _median_sigma(_checked_spot_scales(frames, min_z))


def _checked_spot_scales(frames, min_z=MIN_Z):
    """:func:`_spot_scales` of frames (k, H, W[, 1]); none for too few or too small frames."""
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 4:
        frames = frames[..., 0]
    if frames.ndim != 3 or len(frames) == 0 or min(frames.shape[1:]) < 9:
        return np.zeros(0)
    return _spot_scales(frames, min_z)


def _median_sigma(scales):
    """``(sigma, n_spots)`` from spot scales (n,).

    The median variance less 1/12 px² underestimates wide spots (crowding and
    the coarse scale grid): by 4 % at 1.6 px and 7 % at 2.5-3 px on simulated
    Gaussian spots; the factor ``1 + 0.055 (s - 1)`` undoes it.
    """
    if scales.size < MIN_SPOTS:
        return math.nan, int(scales.size)
    sigma = math.sqrt(max(np.median(scales) ** 2 - 1.0 / 12, 0.0))
    return float(sigma * (1 + 0.055 * (sigma - 1))), int(scales.size)


@functools.lru_cache(maxsize=8)
def _log_filters(height, width):
    """Fourier transfer functions of ``-s² LoG_s`` for rfft2 grids, and their noise gains.

    Returns ``filters`` (n_scales, height, width // 2 + 1) and ``gains``
    (n_scales,): the standard deviation of each response to unit white noise.
    """
    ky = 2 * math.pi * np.fft.fftfreq(height)[:, None]
    kx = 2 * math.pi * np.fft.fftfreq(width)[None, :]
    k2 = ky**2 + kx**2
    full = np.stack([s * s * k2 * np.exp(-0.5 * s * s * k2) for s in SCALES])
    gains = np.sqrt((full**2).mean(axis=(1, 2)))
    return full[:, :, : width // 2 + 1].astype(np.complex64), gains


def _spot_scales(frames, min_z):
    """Scale (pixels) of each spot in frames (k, H, W), shape (n,)."""
    k, h, w = frames.shape
    pad = min(8, h - 1, w - 1)
    # Mirror padding (no wrap-around at the edges) up to sizes the FFT is fast at.
    fast_h, fast_w = (scipy.fft.next_fast_len(n + 2 * pad, real=True) for n in (h, w))
    padded = np.pad(
        frames, ((0, 0), (pad, fast_h - h - pad), (pad, fast_w - w - pad)), mode="reflect"
    )
    filters, gains = _log_filters(*padded.shape[1:])
    spectrum = scipy.fft.rfft2(padded)  # float32 in, complex64 out
    responses = scipy.fft.irfft2(spectrum[None] * filters[:, None], s=padded.shape[1:])
    responses = responses[:, :, pad : pad + h, pad : pad + w]  # (S, k, h, w) float32
    # White pixel noise (from neighbouring-pixel differences, blind to smooth
    # signal) through each filter sets the threshold, so crowded frames do not raise it.
    noise = 1.4826 * np.median(np.abs(np.diff(frames, axis=2)), axis=(1, 2)) / math.sqrt(2)
    # The filters integrate to zero: a flat background responds 0, no centring needed.
    threshold = (
        min_z
        * np.maximum(noise, 1e-12)[None, :, None, None]
        * gains[:, None, None, None].astype(np.float32)
    )
    candidate = responses > threshold
    candidate[0], candidate[-1] = False, False  # the scale must be bracketed
    candidate[:, :, :2], candidate[:, :, -2:] = False, False
    candidate[:, :, :, :2], candidate[:, :, :, -2:] = False, False
    i, frame, rows, cols = np.nonzero(candidate)
    # Spots: candidates that are the maximum of their 3 scales x 5 x 5 pixels.
    mid = responses[i, frame, rows, cols]
    is_max = np.ones(i.size, bool)
    for di in (-1, 0, 1):
        for dr in range(-2, 3):
            for dc in range(-2, 3):
                if di or dr or dc:
                    is_max &= responses[i + di, frame, rows + dr, cols + dc] <= mid
    i, frame, rows, cols = i[is_max], frame[is_max], rows[is_max], cols[is_max]
    left, mid, right = (responses[i + d, frame, rows, cols] for d in (-1, 0, 1))
    curvature = left - 2 * mid + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(curvature < 0, 0.5 * (left - right) / curvature, 0.0)
    log_scale = np.log(SCALES[i]) + np.clip(shift, -0.5, 0.5) * math.log(math.sqrt(2.0))
    return np.exp(log_scale)


class EnvelopeCheck:
    """Flags the frames of a prediction that fall outside a model's envelope.

    :meth:`observe` estimates the PSF width of a chunk of raw frames (it may
    run in a reader thread); :meth:`flags` adds the density of each frame from
    its predicted count and returns the flags.

    Parameters
    ----------
    envelope : Envelope
    frame_shape : tuple of int
        (H, W) of the frames.
    pixel_budget : float
        Fraction of each chunk's pixels used to estimate the PSF width.

    Attributes
    ----------
    chunks : list of dict
        Per chunk: ``frames`` (first, last; 0-based), ``psf_sigma_px``, ``n_spots``,
        ``flag`` (the PSF flag) and ``n_dense`` (frames flagged as too dense).
    """

    def __init__(self, envelope, frame_shape, pixel_budget=1 / 32):
        self.envelope, self.frame_shape = envelope, tuple(frame_shape)
        self.pixel_budget = pixel_budget
        self.chunks = []
        self._psf = {}

    def observe(self, frames, raw):
        """Estimate the PSF width of a chunk: ``frames`` (k,) 0-based, ``raw`` (k, H, W).

        Sampled frames are measured a few at a time until :data:`ENOUGH_SPOTS`
        spots are found or the pixel budget is spent, so crowded chunks cost
        less than sparse ones.
        """
        sample = self._sample(np.asarray(raw))
        step = max(1, (2 * 64 * 64) // (sample.shape[1] * sample.shape[2]))
        scales = []
        for start in range(0, len(sample), step):
            scales.append(_checked_spot_scales(sample[start : start + step]))
            if sum(len(x) for x in scales) >= ENOUGH_SPOTS:
                break
        self._psf[int(frames[0])] = _median_sigma(np.concatenate(scales))

    def flags(self, frames, density):
        """Flags of one chunk's frames, after :meth:`observe` saw them.

        Parameters
        ----------
        frames : ndarray of shape (k,), int
            0-based frame numbers.
        density : ndarray of shape (k, H, W, 1)
            Their predicted densities.

        Returns
        -------
        ndarray of shape (k,), object
            '' where in the envelope, else flag names joined by '+'.
        """
        sigma, n_spots = self._psf.pop(int(frames[0]), (math.nan, 0))
        psf = self.envelope.psf_flag(sigma)
        counts = np.asarray(density).sum(axis=(1, 2, 3), dtype=np.float64)
        dense = self.envelope.density_flags(counts, self.frame_shape[0] * self.frame_shape[1])
        self.chunks.append(
            {
                "frames": (int(frames[0]), int(frames[-1])),
                "psf_sigma_px": sigma,
                "n_spots": n_spots,
                "flag": psf,
                "n_dense": int((dense != "").sum()),
            }
        )
        return np.array(["+".join(f for f in (psf, d) if f) for d in dense], dtype=object)

    def _sample(self, raw):
        """Evenly spaced frames of the chunk, cropped, within the pixel budget."""
        k, h, w = raw.shape[:3]
        budget = max(int(self.pixel_budget * k * h * w), 4 * 64 * 64)
        n_frames = max(1, min(k, budget // (h * w)))
        picked = raw[np.linspace(0, k - 1, n_frames).astype(int)]
        if n_frames == 1 and h * w > budget:  # one large frame: a centred crop
            side_h = min(h, max(16, int(math.sqrt(budget * h / w))))
            side_w = min(w, max(16, budget // side_h))
            r0, c0 = (h - side_h) // 2, (w - side_w) // 2
            picked = picked[:, r0 : r0 + side_h, c0 : c0 + side_w]
        return picked

    def summary(self):
        """One line about flagged frames, or '' when none was flagged."""
        parts = []
        flagged = [c for c in self.chunks if c["flag"]]
        if flagged:
            ranges = ", ".join(
                f"{c['frames'][0] + 1}-{c['frames'][1] + 1} (sigma ~{c['psf_sigma_px']:.2f} px)"
                for c in flagged[:5]
            )
            more = f" and {len(flagged) - 5} more chunks" if len(flagged) > 5 else ""
            low, high = self.envelope.psf_sigma_px
            parts.append(
                f"frames {ranges}{more} have a PSF width outside the model's "
                f"training envelope (sigma {low:g}-{high:g} px)"
            )
        n_dense = sum(c["n_dense"] for c in self.chunks)
        if n_dense:
            parts.append(
                f"{n_dense} frames are denser than the envelope's "
                f"{self.envelope.emitters_per_frame[1]:g} emitters per 64 x 64 px"
            )
        if not parts:
            return ""
        return "; ".join(parts) + ": their counts may be biased (see the flag column)"
