"""What the simulator puts in front of the camera, and the camera itself.

Three parts of a simulated microscope that do not depend on photophysics:

- **layouts**: where fluorophores sit (uniform, in clusters, along filaments);
- **background**: a per-pixel background map with a gradient and out-of-focus haze;
- **cameras**: CCD, EMCCD (gain with excess noise) and sCMOS (per-pixel offset,
  gain and read-noise maps), with an offset, an ADU gain, a bit depth and saturation.

Each is built once per stack from the stack's random generator, so a seed fixes
the whole stack. Positions follow the frame-logger convention: ``x`` = column,
``y`` = row, in pixels, origin at the top-left corner of the top-left pixel.
"""

import math

import numpy as np

from .errors import ConfigError

LAYOUTS = ("uniform", "clustered", "filaments")
CAMERAS = ("ccd", "emccd", "scmos")
# Positions stay this far below the frame's width and height, so that a CSV's
# 4 decimals never round a position onto the edge (outside the frame).
EDGE = 1e-4


class Layout:
    """Draws fluorophore positions for one stack.

    Parameters
    ----------
    kind : {'uniform', 'clustered', 'filaments'}
    height, width : int
        Frame size, pixels.
    rng : numpy.random.Generator
        Draws the structure (cluster centres, filament paths) once.
    n_structures : int
        Clusters or filaments in the frame.
    spread_px : float
        Standard deviation of a cluster (pixels), or of the distance of a
        fluorophore from its filament's axis.
    """

    def __init__(self, kind, height, width, rng, n_structures=10, spread_px=1.5):
        if kind not in LAYOUTS:
            raise ConfigError(f"layout: expected one of {LAYOUTS}, got {kind!r}")
        self.kind, self.height, self.width = kind, height, width
        self.spread = float(spread_px)
        n = max(int(n_structures), 1)
        if kind == "clustered":
            self.centres = np.column_stack([rng.uniform(0, width, n), rng.uniform(0, height, n)])
        elif kind == "filaments":
            self.paths = [_filament_path(height, width, rng) for _ in range(n)]
            lengths = np.array([seg[2].sum() for seg in self.paths])
            self.path_weights = lengths / lengths.sum()

    def positions(self, n, rng):
        """Positions of ``n`` new fluorophores: ``x, y``, arrays of shape (n,)."""
        if self.kind == "uniform" or n == 0:
            return rng.uniform(0, self.width - EDGE, n), rng.uniform(0, self.height - EDGE, n)
        xy = self._structured(n, rng)
        # Fluorophores that fall outside the frame are drawn again from the
        # structure (uniformly, in the rare case it keeps missing the frame).
        for _ in range(20):
            out = (
                (xy[:, 0] < 0)
                | (xy[:, 0] >= self.width - EDGE)
                | (xy[:, 1] < 0)
                | (xy[:, 1] >= self.height - EDGE)
            )
            if not out.any():
                break
            xy[out] = self._structured(int(out.sum()), rng)
        else:
            xy[out, 0] = rng.uniform(0, self.width - EDGE, out.sum())
            xy[out, 1] = rng.uniform(0, self.height - EDGE, out.sum())
        return xy[:, 0], xy[:, 1]

    def _structured(self, n, rng):
        if self.kind == "clustered":
            centre = self.centres[rng.integers(len(self.centres), size=n)]
            return centre + rng.normal(0.0, self.spread, (n, 2))
        xy = np.concatenate(
            [
                _along(path, k, rng)
                for path, k in zip(self.paths, rng.multinomial(n, self.path_weights))
            ]
        )
        return xy + rng.normal(0.0, self.spread, xy.shape)


def _filament_path(height, width, rng, step=1.0, persistence=25.0):
    """A smooth random curve crossing the frame (a worm-like chain).

    Returns ``(starts, directions, lengths)``: segment starts (K, 2), unit
    directions (K, 2) and lengths (K,), pixels.
    """
    n_steps = int(3 * (height + width) / step)
    angle0 = rng.uniform(0, 2 * math.pi)
    turns = rng.normal(0.0, math.sqrt(step / persistence), n_steps)
    angles = angle0 + np.cumsum(turns)
    start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    steps = step * np.column_stack([np.cos(angles), np.sin(angles)])
    # Walk both ways from the start so the filament crosses its start point.
    points = np.concatenate(
        [
            start - np.cumsum(steps[: n_steps // 2], axis=0)[::-1],
            start[None],
            start + np.cumsum(steps[n_steps // 2 :], axis=0),
        ]
    )
    inside = (
        (points[:, 0] > -5)
        & (points[:, 0] < width + 5)
        & (points[:, 1] > -5)
        & (points[:, 1] < height + 5)
    )
    # Segments with both ends near the frame: a path that leaves and comes back
    # is not joined across the gap.
    keep = inside[:-1] & inside[1:]
    keep = keep if keep.any() else np.arange(len(keep)) == len(keep) // 2
    delta = np.diff(points, axis=0)[keep]
    lengths = np.hypot(delta[:, 0], delta[:, 1])
    return points[:-1][keep], delta / np.maximum(lengths, 1e-12)[:, None], lengths


def _along(path, n, rng):
    """``n`` points uniformly along a path from :func:`_filament_path`, shape (n, 2)."""
    starts, directions, lengths = path
    segment = rng.choice(len(lengths), size=n, p=lengths / lengths.sum())
    t = rng.uniform(0, 1, n) * lengths[segment]
    return starts[segment] + directions[segment] * t[:, None]


def background_map(height, width, mean, rng, gradient=0.0, haze=0.0):
    """Per-pixel background, photons per frame, with mean ``mean``.

    Parameters
    ----------
    height, width : int
    mean : float
        Mean background over the frame, photons per pixel per frame.
    rng : numpy.random.Generator
    gradient : float
        Relative peak-to-peak amplitude of a linear ramp in a random direction.
    haze : float
        Relative amplitude of out-of-focus haze: a few broad Gaussian blobs
        (standard deviations 6-25 pixels).

    Returns
    -------
    ndarray of shape (height, width), float64
    """
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    shape = np.ones((height, width))
    if gradient > 0:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * cols / width + math.sin(angle) * rows / height
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-12)
        shape += gradient * (ramp - 0.5)
    if haze > 0:
        blobs = np.zeros((height, width))
        for _ in range(int(rng.integers(1, 5))):
            s = rng.uniform(6, 25)
            cy, cx = rng.uniform(0, height), rng.uniform(0, width)
            blobs += rng.uniform(0.3, 1) * np.exp(
                -((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * s * s)
            )
        shape += haze * blobs / max(blobs.max(), 1e-12)
    shape = np.clip(shape, 0.0, None)
    return mean * shape / max(shape.mean(), 1e-12)


class Camera:
    """A camera turning photoelectrons into ADU frames.

    Parameters
    ----------
    kind : {'ccd', 'emccd', 'scmos'}
    height, width : int
    rng : numpy.random.Generator
        Draws the sCMOS pixel maps once per stack.
    em_gain : float or None
        EM gain (EMCCD only; Gamma-distributed multiplication, excess noise ~sqrt 2).
    read_noise : float
        Read noise, electrons rms (the median of the map on sCMOS).
    baseline : float
        Offset, ADU (the mean of the map on sCMOS).
    adu_gain : float
        Electrons per ADU (after EM gain; the mean of the map on sCMOS).
    bit_depth : int
        ADU values are clipped to ``[0, 2**bit_depth - 1]`` (saturation).
    pixel_spread : float
        sCMOS only: relative spread of the per-pixel gain; the offset map spreads
        by ``pixel_spread * 100`` ADU rms (a few ADU for typical values) and the
        read-noise map is log-normal with that relative spread times 5.
    """

    def __init__(
        self,
        kind,
        height,
        width,
        rng,
        em_gain=None,
        read_noise=1.6,
        baseline=100.0,
        adu_gain=1.0,
        bit_depth=16,
        pixel_spread=0.02,
    ):
        if kind not in CAMERAS:
            raise ConfigError(f"camera: expected one of {CAMERAS}, got {kind!r}")
        if kind == "emccd" and em_gain is None:
            raise ConfigError("camera: 'emccd' needs em_gain (>= 1)")
        self.kind, self.em_gain = kind, em_gain if kind == "emccd" else None
        self.saturation = float(2 ** int(bit_depth) - 1)
        self.offset = np.full((height, width), float(baseline))
        self.adu_gain = np.full((height, width), float(adu_gain))
        self.read_noise = np.full((height, width), float(read_noise))
        if kind == "scmos":
            self.offset += rng.normal(0.0, 100.0 * pixel_spread, (height, width))
            self.adu_gain *= np.clip(1.0 + rng.normal(0.0, pixel_spread, (height, width)), 0.5, 2)
            self.read_noise *= rng.lognormal(0.0, min(5.0 * pixel_spread, 1.5), (height, width))

    def record(self, electrons, rng, shot_noise=True):
        """ADU frame (uint16) from photoelectrons per pixel (H, W), noise included."""
        electrons = np.array(electrons, dtype=float)
        if self.em_gain is not None:
            if shot_noise:
                # The EM register turns n electrons into Gamma(shape=n, scale=gain) electrons.
                hit = electrons > 0
                electrons[hit] = rng.gamma(electrons[hit], self.em_gain)
            else:
                electrons *= self.em_gain
        if self.read_noise.any():
            electrons += rng.normal(0.0, 1.0, electrons.shape) * self.read_noise
        adu = np.rint(electrons / self.adu_gain + self.offset)
        return np.clip(adu, 0, self.saturation).astype(np.uint16)


class EmpiricalPSF:
    """A PSF measured on a microscope, for the simulator to render instead of a Gaussian.

    ``samples[i, j]`` is the fraction of an emitter's photons landing in a pixel
    whose centre lies ``((i - c) / s, (j - c) / s)`` pixels (rows, columns) from
    the emitter, with ``c = (M - 1) / 2`` and ``s`` the oversampling: the pixel-
    integrated PSF sampled every ``1 / s`` pixel, as
    :func:`defcon.calibrate.calibrate` measures it from isolated spots.

    Parameters
    ----------
    samples : array-like of shape (M, M), M odd
        Non-negative; summed over the pixels of any one sub-pixel phase, about 1.
    oversampling : int
        Samples per pixel, ``s``.
    sigma_px : float
        Gaussian width fitted to the spots it was measured on: an emitter of PSF
        width ``sigma`` is rendered with the PSF scaled by ``sigma / sigma_px``
        (defocus, and the spread ``simulate --like`` draws).

    Raises
    ------
    ConfigError
        Samples that are not a square odd grid of finite non-negative numbers,
        or an oversampling or width that is not positive.
    """

    def __init__(self, samples, oversampling, sigma_px):
        samples = np.asarray(samples, float)
        if (
            samples.ndim != 2
            or samples.shape[0] != samples.shape[1]
            or samples.shape[0] % 2 == 0
            or not np.isfinite(samples).all()
            or (samples < 0).any()
            or samples.sum() <= 0
        ):
            raise ConfigError(
                "psf_kernel: samples must be a square grid of odd side holding finite "
                f"non-negative numbers, got shape {samples.shape}"
            )
        if int(oversampling) != oversampling or oversampling < 1 or not sigma_px > 0:
            raise ConfigError(
                "psf_kernel: oversampling must be a whole number >= 1 and sigma_px > 0, "
                f"got {oversampling!r} and {sigma_px!r}"
            )
        self.samples, self.oversampling, self.sigma_px = samples, int(oversampling), sigma_px

    @classmethod
    def from_dict(cls, data):
        """From ``{'samples': [[...]], 'oversampling': s, 'sigma_px': w}`` (conditions files)."""
        if not isinstance(data, dict) or {"samples", "oversampling", "sigma_px"} - set(data):
            raise ConfigError(
                "psf_kernel: expected a dict with samples, oversampling and sigma_px, "
                f"got {type(data).__name__}"
            )
        return cls(data["samples"], data["oversampling"], data["sigma_px"])

    def to_dict(self):
        """JSON-serialisable form (6 significant digits)."""
        samples = [[float(f"{v:.6g}") for v in row] for row in self.samples]
        return {"samples": samples, "oversampling": self.oversampling, "sigma_px": self.sigma_px}

    @property
    def radius(self):
        """Pixels from the centre to the grid's edge at scale 1."""
        return (self.samples.shape[0] - 1) / 2 / self.oversampling

    def pixel_fractions(self, dy, dx, sigma):
        """Fraction of each emitter's photons per window pixel, normalised to 1.

        Parameters
        ----------
        dy, dx : ndarray of shape (N, K)
            Rows and columns of the window's pixel centres less the emitter's position.
        sigma : ndarray of shape (N,)
            Each emitter's PSF width, pixels.

        Returns
        -------
        ndarray of shape (N, K, K)
        """
        from scipy import ndimage

        scale = (sigma / self.sigma_px)[:, None]
        centre = (self.samples.shape[0] - 1) / 2
        rows = np.broadcast_to(
            (dy / scale * self.oversampling + centre)[:, :, None], dy.shape + dx.shape[1:]
        )
        cols = np.broadcast_to((dx / scale * self.oversampling + centre)[:, None, :], rows.shape)
        values = ndimage.map_coordinates(self.samples, [rows, cols], order=1, cval=0.0)
        return values / np.maximum(values.sum(axis=(1, 2), keepdims=True), 1e-300)
