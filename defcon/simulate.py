"""SMLM stack simulator in the style of SASS: a TIFF stack and its frame-logger CSV.

Fluorophores sit at uniform random positions and follow PALM-like photophysics in
continuous time (activation, two reversible dark states, bleaching), so an
emitter that switches mid-frame emits only for that fraction of the exposure.
Photons are spread by a pixel-integrated Gaussian PSF and recorded by a camera
model (quantum efficiency, optional EM gain, dark current, read noise, offset,
ADU gain). Ground truth follows the frame-logger convention: ``x`` = column,
``y`` = row, in pixels, origin at the top-left corner of the top-left pixel,
frames 1-based.
"""

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy.special import erf

from . import scene
from .errors import ConfigError
from .files import atomic_path
from .progress import progress_bar

log = logging.getLogger(__name__)

COLUMNS = ["frame", "id", "x", "y", "z", "brightness"]
DEFAULT_DENSITY_SWEEP = (0.0, 2.0)
ON, DARK1, DARK2, BLEACHED = 0, 1, 2, 3
_CSV_FORMAT = "%d,%d,%.4f,%.4f,%.4f,%.4f"


@dataclasses.dataclass
class SimulationParameters:
    """Physical parameters of a simulation; every rate is per frame (exposure = 1).

    Parameters
    ----------
    fluorophore_density : float
        Fluorophores per µm² in the object plane, all inactive at the start.
        Inactive fluorophores are exchangeable, so only their count is tracked.
    activation_rate : float
        Off -> on rate of each inactive fluorophore, ignored with ``density_sweep``.
        The defaults give about 7 emitters per 64 x 64 frame, as in SASS examples.
    bleach_rate, dark1_rate, dark2_rate : float
        On -> bleached, on -> dark 1, on -> dark 2 rates.
    dark1_return_rate, dark2_return_rate : float
        Dark 1 -> on and dark 2 -> on rates (0 makes the dark state permanent).
    photon_rate : float
        Photons emitted per frame by a fluorophore on for the whole frame.
    wavelength_nm, numerical_aperture : float
        Emission wavelength and objective NA. The PSF is a Gaussian of standard
        deviation ``0.21 * wavelength / NA`` (Zhang et al., Appl. Opt. 2007).
    camera_pixel_nm, magnification : float
        Camera pixel pitch and total magnification; one image pixel covers
        ``camera_pixel_nm / magnification`` nm of the sample (100 nm by default).
    background : float
        Uniform background, photons per pixel per frame.
    quantum_efficiency : float
        Fraction of photons detected, in (0, 1].
    em_gain : float or None
        EM multiplication gain (>= 1; gamma-distributed), None for no EM register.
    read_noise : float
        Gaussian read noise, electrons (rms).
    dark_current : float
        Dark electrons per pixel per frame (Poisson).
    baseline : float
        Camera offset, ADU.
    adu_gain : float
        Electrons per ADU (after EM gain).
    shot_noise : bool
        If False, photon counts, background and dark current take their expected
        values (brightness becomes ``photon_rate * time on``): useful for tests.
    n_fiducials : int
        Always-on beads at uniform positions.
    fiducial_photons : float
        Photons per frame of each fiducial.
    log_fiducials : bool
        Log fiducials in the ground truth (ids ``1 .. n_fiducials``). They are
        emitters in the image, so a counting network should count them.
    density_sweep : None, True or (float, float)
        Target mean density of emitting fluorophores, per µm², at the first and
        last frames (True: ``DEFAULT_DENSITY_SWEEP``, 0 to ~82 per 64 x 64 frame
        at 100 nm pixels). Each frame's activation rate is set from the target,
        the expected number of frames an activation is seen in and the inactive
        pool left, so sparse and crowded frames come from one stack. On a ramp,
        the realised density lags the target by the few frames emitters take to
        blink out (longer with slow dark states).
    sweep_mode : {"linear", "log"}
        Spacing of the target between the two ends ("log" needs both > 0).
    sweep_blocks : int or None
        If set (>= 2), the target is held constant in that many equal blocks.
    psf_sigma_px : float or None
        PSF standard deviation in focus, pixels; None derives it from the
        wavelength, the NA and the pixel size.
    psf_kernel : dict or None
        A measured PSF (:class:`defcon.scene.EmpiricalPSF` as a dict, written
        by ``defcon calibrate``) rendered instead of the Gaussian, scaled to
        each emitter's width (``psf_sigma_px``, widened by defocus).
    defocus_nm : float
        Fluorophores sit at z uniform in ``[-defocus_nm, defocus_nm]`` (logged in
        the CSV's ``z`` column); their PSF widens as
        ``sigma * sqrt(1 + (z / depth_of_focus_nm)**2)``.
    depth_of_focus_nm : float
        See ``defocus_nm``.
    photon_spread : float
        Standard deviation of the log of each fluorophore's brightness factor
        (log-normal, median 1): some fluorophores are dimmer or brighter.
    background_gradient, background_haze : float
        Relative amplitudes of a linear background ramp and of out-of-focus
        haze (see :func:`defcon.scene.background_map`); ``background`` stays the mean.
    camera : {'ccd', 'emccd', 'scmos'} or None
        Camera model; None means 'emccd' when ``em_gain`` is set, else 'ccd'.
    pixel_spread : float
        sCMOS pixel-to-pixel variation (see :class:`defcon.scene.Camera`).
    bit_depth : int
        Camera bit depth: ADU values saturate at ``2**bit_depth - 1``.
    layout : {'uniform', 'clustered', 'filaments'}
        Where fluorophores sit (see :class:`defcon.scene.Layout`).
    n_structures : int
        Clusters or filaments in the frame.
    structure_spread_px : float
        Cluster radius, or distance from a filament's axis (standard deviation, pixels).
    """

    fluorophore_density: float = 2000.0
    activation_rate: float = 1.5e-5
    bleach_rate: float = 0.25
    dark1_rate: float = 0.2
    dark1_return_rate: float = 1.0
    dark2_rate: float = 0.05
    dark2_return_rate: float = 0.05
    photon_rate: float = 2000.0
    wavelength_nm: float = 600.0
    numerical_aperture: float = 1.3
    camera_pixel_nm: float = 16000.0
    magnification: float = 160.0
    background: float = 20.0
    quantum_efficiency: float = 0.9
    em_gain: float | None = None
    read_noise: float = 1.6
    dark_current: float = 0.005
    baseline: float = 100.0
    adu_gain: float = 1.0
    shot_noise: bool = True
    n_fiducials: int = 0
    fiducial_photons: float = 20000.0
    log_fiducials: bool = True
    density_sweep: tuple[float, float] | bool | None = None
    sweep_mode: str = "linear"
    sweep_blocks: int | None = None
    psf_sigma_px: float | None = None
    defocus_nm: float = 0.0
    depth_of_focus_nm: float = 400.0
    photon_spread: float = 0.0
    background_gradient: float = 0.0
    background_haze: float = 0.0
    camera: str | None = None
    pixel_spread: float = 0.02
    bit_depth: int = 16
    layout: str = "uniform"
    n_structures: int = 10
    structure_spread_px: float = 1.5
    psf_kernel: dict | None = None

    def __post_init__(self):
        for name in _NON_NEGATIVE:
            setattr(self, name, _number(name, getattr(self, name)))
        for name in _POSITIVE:
            setattr(self, name, _number(name, getattr(self, name), strict=True))
        self.quantum_efficiency = _number(
            "quantum_efficiency", self.quantum_efficiency, strict=True, high=1.0
        )
        if self.em_gain is not None:
            self.em_gain = _number("em_gain", self.em_gain, low=1.0)
        self.n_fiducials = _integer("n_fiducials", self.n_fiducials, minimum=0)
        self.n_structures = _integer("n_structures", self.n_structures, minimum=1)
        self.bit_depth = _integer("bit_depth", self.bit_depth, minimum=8)
        if self.bit_depth > 16:
            raise ConfigError(
                f"bit_depth: expected at most 16 (frames are uint16), got {self.bit_depth}"
            )
        if self.psf_sigma_px is not None:
            self.psf_sigma_px = _number("psf_sigma_px", self.psf_sigma_px, strict=True)
        self.empirical_psf = (
            None if self.psf_kernel is None else scene.EmpiricalPSF.from_dict(self.psf_kernel)
        )
        if self.camera is None:
            self.camera = "ccd" if self.em_gain is None else "emccd"
        if self.camera not in scene.CAMERAS or self.layout not in scene.LAYOUTS:
            bad, options = (
                ("camera", scene.CAMERAS)
                if self.camera not in scene.CAMERAS
                else ("layout", scene.LAYOUTS)
            )
            raise ConfigError(f"{bad}: expected one of {options}, got {getattr(self, bad)!r}")
        if self.camera == "emccd" and self.em_gain is None:
            raise ConfigError("em_gain: camera 'emccd' needs an EM gain (>= 1)")
        for name in ("shot_noise", "log_fiducials"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ConfigError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if self.density_sweep is True:
            self.density_sweep = DEFAULT_DENSITY_SWEEP
        if self.density_sweep is not None:
            self._check_sweep()

    def _check_sweep(self):
        sweep = self.density_sweep
        if isinstance(sweep, (str, bytes)) or not hasattr(sweep, "__len__") or len(sweep) != 2:
            raise ConfigError(f"density_sweep: expected None, True or (low, high), got {sweep!r}")
        self.density_sweep = tuple(_number("density_sweep", v) for v in sweep)
        if self.sweep_mode not in ("linear", "log"):
            raise ConfigError(f"sweep_mode: expected 'linear' or 'log', got {self.sweep_mode!r}")
        if self.sweep_mode == "log" and min(self.density_sweep) == 0:
            raise ConfigError(f"density_sweep: a 'log' sweep needs densities > 0, got {sweep!r}")
        if self.sweep_blocks is not None:
            self.sweep_blocks = _integer("sweep_blocks", self.sweep_blocks, minimum=2)
        if self.bleach_rate == 0:
            raise ConfigError("bleach_rate: must be > 0 with a density_sweep")

    @property
    def pixel_size_nm(self):
        """Side of one image pixel in the sample plane, nm."""
        return self.camera_pixel_nm / self.magnification

    @property
    def sigma_px(self):
        """Standard deviation of the Gaussian PSF in focus, pixels."""
        if self.psf_sigma_px is not None:
            return self.psf_sigma_px
        return 0.21 * self.wavelength_nm / self.numerical_aperture / self.pixel_size_nm


_NON_NEGATIVE = [
    "fluorophore_density",
    "activation_rate",
    "bleach_rate",
    "dark1_rate",
    "dark1_return_rate",
    "dark2_rate",
    "dark2_return_rate",
    "photon_rate",
    "background",
    "read_noise",
    "dark_current",
    "baseline",
    "fiducial_photons",
    "defocus_nm",
    "photon_spread",
    "background_gradient",
    "background_haze",
    "pixel_spread",
    "structure_spread_px",
]
_POSITIVE = [
    "wavelength_nm",
    "numerical_aperture",
    "camera_pixel_nm",
    "magnification",
    "adu_gain",
    "depth_of_focus_nm",
]


def _number(name, value, low=0.0, strict=False, high=None):
    """Return ``value`` as a float, or raise ConfigError naming ``name``."""
    real = isinstance(value, (int, float, np.integer, np.floating))
    if not real or isinstance(value, (bool, np.bool_)) or not math.isfinite(value):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if value < low or (strict and value == low) or (high is not None and value > high):
        bounds = f"{'>' if strict else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
        raise ConfigError(f"{name}: expected a number {bounds}, got {value!r}")
    return float(value)


def _integer(name, value, minimum):
    """Return ``value`` as an int >= ``minimum``, or raise ConfigError naming ``name``."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _parameters(params):
    fields = [f.name for f in dataclasses.fields(SimulationParameters)]
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown simulation parameter; expected one of {fields}")
    return SimulationParameters(**params)


def _advance(state, t0, p, rng):
    """Run fluorophores' photophysics from times ``t0`` to the end of the frame (time 1).

    ``state`` (int8) and ``t0`` have shape (N,). Returns the time each spent on in
    the frame, shape (N,) in [0, 1], and their states at the end of the frame.
    Dwell times are exponential, so an emitter can switch several times a frame.
    """
    out_rate = np.array(
        [p.bleach_rate + p.dark1_rate + p.dark2_rate, p.dark1_return_rate, p.dark2_return_rate, 0.0]
    )
    on_cum = np.cumsum([p.bleach_rate, p.dark1_rate, p.dark2_rate]) / max(out_rate[ON], 1e-300)
    on_targets = np.array([BLEACHED, DARK1, DARK2], dtype=np.int8)
    state, t = state.copy(), np.asarray(t0, dtype=float).copy()
    on_time = np.zeros(state.shape)
    idx = np.arange(state.size)
    while idx.size:
        s, rate = state[idx], out_rate[state[idx]]
        dwell = np.divide(
            rng.standard_exponential(idx.size), rate, out=np.full(idx.size, np.inf), where=rate > 0
        )
        end = np.minimum(t[idx] + dwell, 1.0)
        on_time[idx] += np.where(s == ON, end - t[idx], 0.0)
        t[idx] = end
        jumped = end < 1.0
        idx, s = idx[jumped], s[jumped]
        # Dark states return to ON; ON goes to BLEACHED, DARK1 or DARK2 in proportion to rates.
        new = np.full(idx.size, ON, dtype=np.int8)
        u = rng.random(idx.size)
        leaving_on = s == ON
        pick = np.searchsorted(on_cum, u[leaving_on], side="right")
        new[leaving_on] = on_targets[np.minimum(pick, 2)]
        state[idx] = new
    return on_time, state


def _absorbing(p):
    """Which states (indexed by ON, DARK1, DARK2, BLEACHED) are never left, shape (4,)."""
    return np.array([False, p.dark1_return_rate == 0, p.dark2_return_rate == 0, True])


def _visible_frames_per_activation(p, n=4000, max_frames=2000):
    """Expected number of frames in which one activated fluorophore is logged (Monte Carlo)."""
    rng = np.random.default_rng(20170313)
    state, t0, total = np.zeros(n, dtype=np.int8), rng.random(n), 0.0
    absorbing = _absorbing(p)
    for _ in range(max_frames):
        on_time, state = _advance(state, t0, p, rng)
        # With shot noise, an emitter is logged only if it emits at least one photon.
        seen = -np.expm1(-p.photon_rate * on_time) if p.shot_noise else on_time > 0
        total += seen.sum()
        state = state[~absorbing[state]]
        t0 = np.zeros(state.size)
        if not state.size:
            break
    return total / n


def _sweep_target(i, n_frames, p):
    """Target density (per µm²) of frame ``i`` (0-based) of a density sweep."""
    low, high = p.density_sweep
    frac = i / max(n_frames - 1, 1)
    if p.sweep_blocks:
        frac = (i * p.sweep_blocks // n_frames) / (p.sweep_blocks - 1)
    if p.sweep_mode == "log":
        return low * (high / low) ** frac
    return low + (high - low) * frac


def _psf_windows(x, y, height, width, sigma, psf=None):
    """Pixel-integrated PSF of each emitter over a window of ±ceil(4 sigma) pixels.

    ``sigma`` is a float or one per emitter, shape (N,); the window follows the
    largest. The PSF is a Gaussian, or ``psf`` (a :class:`defcon.scene.EmpiricalPSF`,
    scaled to each ``sigma``; window as wide as it reaches). Returns ``flat`` (N, K)
    int64 pixel indices into the flattened frame, ``inside`` (N, K) bool (pixel
    in the frame) and ``prob`` (N, K) float64, the fraction of the emitter's
    photons landing in each pixel, with K = (2 half + 1)².
    """
    sigma = np.broadcast_to(np.asarray(sigma, float), np.shape(x))
    reach = 4.0 if psf is None else psf.radius / psf.sigma_px
    half = int(math.ceil(reach * sigma.max())) if sigma.size else 1
    n, size = len(x), (2 * half + 1) ** 2
    edges = np.arange(-half, half + 2)  # the edges of 2*half+1 pixels
    cols = np.floor(x).astype(np.int64)[:, None] + edges
    rows = np.floor(y).astype(np.int64)[:, None] + edges
    if psf is None:
        scale = math.sqrt(2) * sigma[:, None]
        px = np.diff(0.5 * erf((cols - x[:, None]) / scale), axis=1)
        py = np.diff(0.5 * erf((rows - y[:, None]) / scale), axis=1)
        prob = (py[:, :, None] * px[:, None, :]).reshape(n, size)
    else:
        dx, dy = cols[:, :-1] + 0.5 - x[:, None], rows[:, :-1] + 0.5 - y[:, None]
        prob = psf.pixel_fractions(dy, dx, sigma).reshape(n, size)
    rows, cols = rows[:, :-1, None], cols[:, None, :-1]
    inside = ((rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)).reshape(n, size)
    return (rows * width + cols).reshape(n, size), inside, prob


def _accumulate(flat, inside, values, height, width):
    image = np.bincount(flat[inside], weights=values[inside], minlength=height * width)
    return image.astype(float).reshape(height, width)


def render_emitters(x, y, photons, height, width, sigma, psf=None):
    """Expected photons per pixel from emitters with a pixel-integrated Gaussian PSF.

    Only a window of ±ceil(4 sigma) pixels around each emitter is computed, so
    the cost per emitter does not depend on the frame size. Photons falling
    outside the frame (or the window, about 1e-4 of them) are lost.

    Parameters
    ----------
    x, y : ndarray of shape (N,)
        Column and row positions, pixels (pixel (r, c) covers [c, c+1) x [r, r+1)).
    photons : ndarray of shape (N,)
        Photons of each emitter.
    height, width : int
    sigma : float or ndarray of shape (N,)
        PSF standard deviation, pixels (one for all, or one per emitter).
    psf : defcon.scene.EmpiricalPSF, optional
        A measured PSF to render instead of the Gaussian (scaled to ``sigma``).

    Returns
    -------
    ndarray of shape (height, width), float64
    """
    flat, inside, prob = _psf_windows(
        np.asarray(x, float), np.asarray(y, float), height, width, sigma, psf
    )
    return _accumulate(flat, inside, np.asarray(photons, float)[:, None] * prob, height, width)


def _detect(x, y, sigma, expected, height, width, p, rng):
    """Emit and detect the photons of one frame.

    ``sigma`` (N,) holds each emitter's PSF width and ``expected`` (N,) its
    expected photons. Returns the photons emitted (N,) and the photoelectrons
    per pixel (height, width). With shot noise, detected photons per pixel and
    undetected photons are independent Poisson counts whose sum, the emitted
    photons, is Poisson(expected) as it should be.
    """
    psf = p.empirical_psf
    if not p.shot_noise:
        signal = render_emitters(x, y, expected * p.quantum_efficiency, height, width, sigma, psf)
        return expected, signal
    flat, inside, prob = _psf_windows(x, y, height, width, sigma, psf)
    counts = rng.poisson(expected[:, None] * p.quantum_efficiency * prob)
    undetected = np.clip(1.0 - p.quantum_efficiency * prob.sum(axis=1), 0.0, None)
    photons = counts.sum(axis=1) + rng.poisson(expected * undetected)
    return photons.astype(float), _accumulate(flat, inside, counts, height, width)


def _apply_camera(signal, background, camera, p, rng):
    """Add background, dark current and camera noise to the emitters' photoelectrons.

    ``signal`` (H, W) holds photoelectrons from emitters, ``background`` (H, W)
    background photons; returns a uint16 frame (H, W) recorded by ``camera``
    (a :class:`defcon.scene.Camera`).
    """
    mean_background = background * p.quantum_efficiency + p.dark_current
    if p.shot_noise:
        # Detecting Poisson(background) photons with efficiency QE gives Poisson(background * QE).
        electrons = signal + rng.poisson(mean_background, signal.shape)
    else:
        electrons = signal + mean_background
    return camera.record(electrons, rng, shot_noise=p.shot_noise)


def _activation_times(n_inactive, p_act, rng):
    """Activation times in [0, 1) of the fluorophores activated in a frame, shape (n_new,)."""
    n_new = int(rng.binomial(n_inactive, p_act))
    u = rng.random(n_new)
    if p_act >= 1:
        return np.zeros(n_new)
    # Exponential waiting times at rate k = -log(1 - p_act), truncated to the frame.
    return np.log1p(-u * p_act) / math.log1p(-p_act) if p_act > 0 else u


def _frames(n_frames, height, width, seed, p):
    """Yield ``(index, image, ids, x, y, z, brightness, n_first)`` frame by frame.

    ``index`` is 0-based; ``ids`` are ascending; ``n_first`` counts the logged
    emitters logged for the first time in this frame.
    """
    rng = np.random.default_rng(seed)
    area_um2 = height * width * (p.pixel_size_nm / 1000.0) ** 2
    n_inactive = int(rng.poisson(p.fluorophore_density * area_um2))
    # Fiducials come first in every array; they never change state.
    nf = p.n_fiducials
    ids, next_id = np.arange(1, nf + 1), nf + 1
    xs, ys = rng.uniform(0, width - scene.EDGE, nf), rng.uniform(0, height - scene.EDGE, nf)
    zs, gains = np.zeros(nf), np.ones(nf)
    layout = scene.Layout(p.layout, height, width, rng, p.n_structures, p.structure_spread_px)
    background = scene.background_map(
        height, width, p.background, rng, p.background_gradient, p.background_haze
    )
    camera = scene.Camera(
        p.camera,
        height,
        width,
        rng,
        p.em_gain,
        p.read_noise,
        p.baseline,
        p.adu_gain,
        p.bit_depth,
        p.pixel_spread,
    )
    state, seen, absorbing = np.zeros(0, np.int8), np.zeros(nf, bool), _absorbing(p)
    warned = False
    if p.density_sweep is not None:
        area_per_visible = area_um2 / _visible_frames_per_activation(p)
    for i in range(n_frames):
        p_act = -math.expm1(-p.activation_rate)
        if p.density_sweep is not None:
            births = _sweep_target(i, n_frames, p) * area_per_visible
            p_act = min(1.0, births / max(n_inactive, 1))
            if births > n_inactive and not warned:
                warned = True
                log.warning(
                    "frame %d: too few inactive fluorophores left for the density sweep;"
                    " raise fluorophore_density",
                    i + 1,
                )
        t_new = _activation_times(n_inactive, p_act, rng)
        n_new = t_new.size
        n_inactive -= n_new
        ids = np.concatenate([ids, np.arange(next_id, next_id + n_new)])
        next_id += n_new
        new_x, new_y = layout.positions(n_new, rng)
        xs, ys = np.concatenate([xs, new_x]), np.concatenate([ys, new_y])
        zs, gains = (
            np.concatenate([zs, _new_depths(n_new, p, rng)]),
            np.concatenate([gains, _new_gains(n_new, p, rng)]),
        )
        seen = np.concatenate([seen, np.zeros(n_new, bool)])
        state = np.concatenate([state, np.full(n_new, ON, np.int8)])
        t0 = np.concatenate([np.zeros(state.size - n_new), t_new])
        on_time, state = _advance(state, t0, p, rng)
        expected = np.concatenate(
            [np.full(nf, p.fiducial_photons), p.photon_rate * gains[nf:] * on_time]
        )
        sigma = p.sigma_px * np.sqrt(1.0 + (zs / p.depth_of_focus_nm) ** 2)
        photons, signal = _detect(xs, ys, sigma, expected, height, width, p, rng)
        frame = _apply_camera(signal, background, camera, p, rng)
        logged = photons > 0
        logged[:nf] &= p.log_fiducials
        n_first = int((logged & ~seen).sum())
        seen |= logged
        yield (i, frame, ids[logged], xs[logged], ys[logged], zs[logged], photons[logged], n_first)
        alive = np.concatenate([np.ones(nf, bool), ~absorbing[state]])
        ids, xs, ys, zs, gains, seen = (a[alive] for a in (ids, xs, ys, zs, gains, seen))
        state = state[alive[nf:]]


def _new_depths(n, p, rng):
    """Axial positions (nm) of ``n`` newly activated fluorophores, shape (n,)."""
    if p.defocus_nm == 0:
        return np.zeros(n)
    return rng.uniform(-p.defocus_nm, p.defocus_nm, n)


def _new_gains(n, p, rng):
    """Brightness factors (log-normal, median 1) of ``n`` new fluorophores, shape (n,)."""
    if p.photon_spread == 0:
        return np.ones(n)
    return rng.lognormal(0.0, p.photon_spread, n)


def _check_size(n_frames, height, width):
    return tuple(
        _integer(name, value, 1)
        for name, value in (("n_frames", n_frames), ("height", height), ("width", width))
    )


def _rows(i, ids, x, y, z, brightness):
    """Frame-logger rows of one frame, float64 of shape (N, 6)."""
    return np.column_stack([np.full(len(ids), i + 1), ids, x, y, z, brightness]).astype(float)


def simulate_stack(n_frames, height, width, seed=None, **params):
    """Simulate an SMLM stack in memory.

    Parameters
    ----------
    n_frames, height, width : int
        Stack size (>= 1 each; frames may be non-square).
    seed : int, numpy.random.SeedSequence or None
        Seed of the ``numpy.random.Generator``: the same seed gives the same result.
    **params
        Fields of :class:`SimulationParameters`.

    Returns
    -------
    stack : ndarray of shape (n_frames, height, width), uint16
    ground_truth : pandas.DataFrame
        Columns ``frame, id, x, y, z, brightness``: one row per emitter per frame
        in which it emitted at least one photon (frame 1-based, z in nm, brightness
        in photons emitted during that frame), sorted by frame then id.

    Raises
    ------
    ConfigError
        A size or parameter is unknown, of the wrong type or out of range.

    Examples
    --------
    >>> stack, gt = simulate_stack(10, 32, 48, seed=1, density_sweep=(0.1, 1.0))
    >>> stack.shape, list(gt.columns)
    ((10, 32, 48), ['frame', 'id', 'x', 'y', 'z', 'brightness'])
    """
    n_frames, height, width = _check_size(n_frames, height, width)
    p = _parameters(params)
    stack = np.empty((n_frames, height, width), np.uint16)
    rows = []
    for i, frame, ids, x, y, z, brightness, _ in _frames(n_frames, height, width, seed, p):
        stack[i] = frame
        rows.append(_rows(i, ids, x, y, z, brightness))
    truth = pd.DataFrame(np.concatenate(rows), columns=COLUMNS)
    return stack, truth.astype({"frame": np.int64, "id": np.int64})


def _count(summary, n_logged, n_first):
    summary["n_emitters"] += n_first
    summary["n_localizations"] += n_logged
    low = summary["emitters_per_frame_min"]
    summary["emitters_per_frame_min"] = n_logged if low is None else min(low, n_logged)
    summary["emitters_per_frame_max"] = max(summary["emitters_per_frame_max"], n_logged)


def simulate(out_dir, n_frames, height, width, seed=None, progress=False, **params):
    """Simulate an SMLM stack and write ``stack.tif`` and ``frame_logger.csv``.

    Frames are generated and written one at a time, so memory does not grow
    with ``n_frames``. Both files are written atomically: if the call fails,
    neither is left behind and files from an earlier run are untouched.

    Parameters
    ----------
    out_dir : str or Path
        Output folder, created if missing.
    n_frames, height, width : int
        Stack size (>= 1 each).
    seed : int or None
        Seed: the same seed gives identical files.
    progress : bool
        Show a progress bar (on a terminal only).
    **params
        Fields of :class:`SimulationParameters`.

    Returns
    -------
    dict
        ``stack`` and ``frame_logger`` (Paths), ``n_frames``, ``height``,
        ``width``, ``n_emitters`` (distinct ids logged), ``n_localizations``
        (CSV rows), ``emitters_per_frame_mean``, ``emitters_per_frame_min``,
        ``emitters_per_frame_max`` and ``sigma_px``.

    Raises
    ------
    ConfigError
        A size or parameter is unknown, of the wrong type or out of range.

    Notes
    -----
    ``stack.tif`` is an ImageJ hyperstack (axes TYX, uint16); stacks of 4 GB or
    more are written as BigTIFF, which ImageJ opens through Bio-Formats.
    ``frame_logger.csv`` has SASS's layout: ``1,3,5.3519,62.3395,0.0000,1573.0000``.
    """
    n_frames, height, width = _check_size(n_frames, height, width)
    p = _parameters(params)
    tif_path, csv_path = Path(out_dir) / "stack.tif", Path(out_dir) / "frame_logger.csv"
    description = tifffile.imagej_description((n_frames, height, width), axes="TYX")
    bigtiff = n_frames * height * width * 2 >= 2**32 - 2**25
    summary = {
        "stack": tif_path,
        "frame_logger": csv_path,
        "n_frames": n_frames,
        "height": height,
        "width": width,
        "n_emitters": 0,
        "n_localizations": 0,
        "emitters_per_frame_min": None,
        "emitters_per_frame_max": 0,
        "sigma_px": p.sigma_px,
    }
    with atomic_path(tif_path) as tmp_tif, atomic_path(csv_path) as tmp_csv:
        with (
            tifffile.TiffWriter(tmp_tif, bigtiff=bigtiff) as tif,
            open(tmp_csv, "w", newline="") as csv,
        ):
            csv.write(",".join(COLUMNS) + "\n")
            frames = progress_bar(
                _frames(n_frames, height, width, seed, p),
                total=n_frames,
                show=progress,
                unit="frame",
                desc="simulate",
            )
            for i, frame, ids, x, y, z, brightness, n_first in frames:
                tif.write(
                    frame,
                    contiguous=True,
                    metadata=None,
                    description=description if i == 0 else None,
                )
                np.savetxt(csv, _rows(i, ids, x, y, z, brightness), fmt=_CSV_FORMAT)
                _count(summary, len(ids), n_first)
    summary["emitters_per_frame_mean"] = summary["n_localizations"] / n_frames
    log.debug(
        "simulated %d frames of %d x %d px: %d emitters, %.2f per frame (%d to %d)",
        n_frames,
        height,
        width,
        summary["n_emitters"],
        summary["emitters_per_frame_mean"],
        summary["emitters_per_frame_min"],
        summary["emitters_per_frame_max"],
    )
    return summary
