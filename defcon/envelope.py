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
from scipy import ndimage

#: Densities are quoted per 64 x 64 pixels whatever the frame size.
FRAME_PX = 64 * 64
#: Relative tolerance on the PSF width before a chunk is flagged: the estimate
#: scatters by a few % and defocused emitters widen the median a little.
SIGMA_TOLERANCE = 0.1
#: Flag names in the counts CSV, joined by '+' when several apply.
FLAGS = ("psf_narrow", "psf_wide", "too_dense")


@dataclasses.dataclass(frozen=True)
class Envelope:
    """Imaging conditions a model was trained on.

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
        return {"psf_sigma_px": list(self.psf_sigma_px),
                "emitters_per_frame": list(self.emitters_per_frame),
                "description": self.description}

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; None for None."""
        if values is None:
            return None
        return cls(tuple(float(v) for v in values["psf_sigma_px"]),
                   tuple(float(v) for v in values["emitters_per_frame"]),
                   str(values.get("description", "")))

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


def estimate_psf_sigma(frames, min_z=8.0):
    """Estimate the PSF standard deviation of raw frames from their spots' scale.

    The scale-normalised Laplacian of Gaussian ``-s² LoG_s * I`` of a Gaussian
    spot of variance ``v`` peaks at ``s² = v`` (Lindeberg's blob detector), and
    ignores smooth background (gradients, haze). Each frame is filtered at
    :data:`SCALES`; every local maximum of the best response (5 x 5) standing
    ``min_z`` robust standard deviations above its scale's noise is a spot, and
    its scale is found by a parabola through the responses around the best
    (in log scale). The median spot variance, less the pixel's 1/12 px², gives
    sigma.

    Parameters
    ----------
    frames : ndarray of shape (k, H, W) or (k, H, W, 1)
        Raw frames (any offset or gain), at least 9 x 9 pixels.
    min_z : float
        Detection threshold, in robust standard deviations of each response.

    Returns
    -------
    sigma : float
        PSF standard deviation, pixels (NaN with fewer than ``MIN_SPOTS`` spots).
    n_spots : int
    """
    frames = np.asarray(frames, np.float32)
    if frames.ndim == 4:
        frames = frames[..., 0]
    if frames.ndim != 3 or min(frames.shape[1:]) < 9:
        return math.nan, 0
    scales = np.concatenate([_frame_scales(frame, min_z) for frame in frames])
    if scales.size < MIN_SPOTS:
        return math.nan, int(scales.size)
    variance = np.median(scales) ** 2 - 1.0 / 12
    return float(math.sqrt(max(variance, 0.0))), int(scales.size)


@functools.lru_cache(maxsize=1)
def _noise_gain():
    """Standard deviation of each scale's response to unit white noise, shape (n_scales,)."""
    noise = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    return np.array([(s * s * ndimage.gaussian_laplace(noise, s))[16:-16, 16:-16].std()
                     for s in SCALES])


def _frame_scales(frame, min_z):
    """Scale (pixels) of each spot of one frame, shape (n,)."""
    responses = np.stack([-s * s * ndimage.gaussian_laplace(frame, s, mode="nearest")
                          for s in SCALES])
    # White pixel noise (from neighbouring-pixel differences, blind to smooth
    # signal) through each filter sets the detection threshold, so crowded
    # frames do not raise it.
    noise = 1.4826 * np.median(np.abs(np.diff(frame, axis=1))) / math.sqrt(2)
    centred = responses - np.median(responses, axis=(1, 2), keepdims=True)
    z = centred / (max(float(noise), 1e-12) * _noise_gain()[:, None, None])
    # Spots are local maxima in scale and space (3 scales x 5 x 5 pixels).
    peaks = (responses == ndimage.maximum_filter(responses, size=(3, 5, 5), mode="nearest")) \
        & (z > min_z)
    peaks[0], peaks[-1] = False, False  # the scale must be bracketed
    i, rows, cols = np.nonzero(peaks)
    profile = responses[:, rows, cols]  # (n_scales, n)
    n = np.arange(i.size)
    left, mid, right = profile[i - 1, n], profile[i, n], profile[i + 1, n]
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

    def __init__(self, envelope, frame_shape, pixel_budget=1 / 16):
        self.envelope, self.frame_shape = envelope, tuple(frame_shape)
        self.pixel_budget = pixel_budget
        self.chunks = []
        self._psf = {}

    def observe(self, frames, raw):
        """Estimate the PSF width of a chunk: ``frames`` (k,) 0-based, ``raw`` (k, H, W)."""
        self._psf[int(frames[0])] = estimate_psf_sigma(self._sample(np.asarray(raw)))

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
        self.chunks.append({"frames": (int(frames[0]), int(frames[-1])), "psf_sigma_px": sigma,
                            "n_spots": n_spots, "flag": psf,
                            "n_dense": int((dense != "").sum())})
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
            picked = picked[:, r0:r0 + side_h, c0:c0 + side_w]
        return picked

    def summary(self):
        """One line about flagged frames, or '' when none was flagged."""
        parts = []
        flagged = [c for c in self.chunks if c["flag"]]
        if flagged:
            ranges = ", ".join(f"{c['frames'][0] + 1}-{c['frames'][1] + 1} "
                               f"(sigma ~{c['psf_sigma_px']:.2f} px)" for c in flagged[:5])
            more = f" and {len(flagged) - 5} more chunks" if len(flagged) > 5 else ""
            low, high = self.envelope.psf_sigma_px
            parts.append(f"frames {ranges}{more} have a PSF width outside the model's "
                         f"training envelope (sigma {low:g}-{high:g} px)")
        n_dense = sum(c["n_dense"] for c in self.chunks)
        if n_dense:
            parts.append(f"{n_dense} frames are denser than the envelope's "
                         f"{self.envelope.emitters_per_frame[1]:g} emitters per 64 x 64 px")
        if not parts:
            return ""
        return "; ".join(parts) + ": their counts may be biased (see the flag column)"
