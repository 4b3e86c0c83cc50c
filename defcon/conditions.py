"""Imaging conditions: declared ranges, random draws of them, and conditions files.

A *conditions* dict holds :class:`defcon.simulate.SimulationParameters` fields for
one stack (PSF width, brightness, background and its structure, camera, pixel
size, layout, density sweep) plus ``brightness_threshold``: the photons an
emitter must exceed in a frame to count in that frame. :func:`sample_conditions`
draws them from :data:`TRAINING_RANGES`, which span common widefield SMLM setups
(EMCCD, sCMOS and CCD cameras; 60-160 nm pixels; in-focus PSF sigma 0.7-2.5 px).

Densities are given per pixel (emitters per 64 x 64 frame), not per µm², so one
range means the same crowding in the image whatever the pixel size.
"""

import math

import numpy as np

from .envelope import FRAME_PX  # densities are quoted per 64 x 64 pixels
from .errors import ConfigError
from .files import read_json, write_json

#: The brightness threshold of simulated stacks, as a fraction of the photons of a
#: typical fluorophore on for a whole frame: an emitter counts in a frame when it
#: emits more than this (on for most of the exposure, or not unusually dim).
THRESHOLD_FRACTION = 0.1

#: Declared ranges of the conditions drawn by :func:`sample_conditions`.
#: ``(low, high)`` pairs are drawn log-uniformly when marked "log", else uniformly.
TRAINING_RANGES = {
    "psf_sigma_px": (0.7, 2.5, "log"),
    "pixel_size_nm": (60.0, 160.0, "uniform"),
    "photon_rate": (200.0, 20000.0, "log"),
    "photon_spread": (0.0, 0.6, "uniform"),
    "background": (0.5, 300.0, "log"),
    "defocus_fraction": (0.0, 0.75, "uniform"),
    "emitters_per_frame": (0.0, 360.0, "sqrt"),
    "min_peak_snr": (2.0, None, "fixed"),
}
CAMERA_WEIGHTS = {"ccd": 0.2, "emccd": 0.4, "scmos": 0.4}
LAYOUT_WEIGHTS = {"uniform": 0.5, "clustered": 0.2, "filaments": 0.3}


def _draw(rng, name, ranges):
    low, high, kind = ranges[name]
    if kind == "log":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if kind == "sqrt":  # dense frames are rarer than sparse ones, but not rare
        return float(rng.uniform(math.sqrt(low), math.sqrt(high)) ** 2)
    return float(rng.uniform(low, high))


def peak_snr(photons, sigma_px, background, read_noise=0.0):
    """Peak signal-to-noise ratio of an in-focus spot on its background.

    ``photons / (2 pi sigma²)`` (the expected photons in the spot's brightest
    pixel, roughly) over the shot and read noise of the background there.
    """
    peak = photons / (2 * math.pi * sigma_px**2)
    return peak / math.sqrt(background + read_noise**2 + 1.0)


def sample_conditions(seed, ranges=None, n_frames=400):
    """Draw the imaging conditions of one simulated stack.

    Parameters
    ----------
    seed : int or numpy.random.SeedSequence
        The same seed gives the same conditions.
    ranges : dict, optional
        Overrides of :data:`TRAINING_RANGES` entries.
    n_frames : int
        Frames of the stack; the density sweeps from sparse to crowded in
        blocks of about 100 frames.

    Returns
    -------
    dict
        Keyword arguments of :func:`defcon.simulate.simulate` plus
        ``brightness_threshold`` (photons); JSON-serialisable.
    """
    ranges = {**TRAINING_RANGES, **(ranges or {})}
    rng = np.random.default_rng(seed)
    sigma = _draw(rng, "psf_sigma_px", ranges)
    pixel_nm = _draw(rng, "pixel_size_nm", ranges)
    background = _draw(rng, "background", ranges)
    camera = str(rng.choice(list(CAMERA_WEIGHTS), p=list(CAMERA_WEIGHTS.values())))
    read_noise = {
        "ccd": rng.uniform(4, 12),
        "emccd": rng.uniform(20, 80),
        "scmos": rng.uniform(1.0, 2.5),
    }[camera]
    em_gain = (
        float(math.exp(rng.uniform(math.log(30), math.log(300)))) if camera == "emccd" else None
    )
    # Spots the eye can see: brighter stacks than the noise floor needs are kept,
    # dimmer ones are raised to it (a stack of invisible emitters teaches nothing).
    effective_read = read_noise / (em_gain or 1.0)
    low, high, _ = ranges["photon_rate"]
    floor = (
        ranges["min_peak_snr"][0]
        * 2
        * math.pi
        * sigma**2
        * math.sqrt(background + effective_read**2 + 1.0)
    )
    photons = _draw(
        rng, "photon_rate", {"photon_rate": (max(low, min(floor, high / 2)), high, "log")}
    )
    qe = rng.uniform(0.6, 0.95)
    electrons_per_adu = {
        "ccd": rng.uniform(0.5, 5),
        "scmos": rng.uniform(0.2, 2.5),
        "emccd": (em_gain or 1.0) / rng.uniform(1, 10),
    }[camera]
    layout = str(rng.choice(list(LAYOUT_WEIGHTS), p=list(LAYOUT_WEIGHTS.values())))
    camera_pixel_nm = 6500.0 if camera == "scmos" else 16000.0
    high_density = _draw(rng, "emitters_per_frame", ranges)
    per_um2 = (pixel_nm / 1000.0) ** -2 / FRAME_PX
    conditions = {
        "psf_sigma_px": sigma,
        "defocus_nm": _draw(rng, "defocus_fraction", ranges) * 400.0,
        "depth_of_focus_nm": 400.0,
        "camera_pixel_nm": camera_pixel_nm,
        "magnification": camera_pixel_nm / pixel_nm,
        "photon_rate": photons,
        "photon_spread": _draw(rng, "photon_spread", ranges),
        "background": background,
        "background_gradient": float(rng.uniform(0, 0.8)) if rng.random() < 0.5 else 0.0,
        "background_haze": float(rng.uniform(0, 2.0)) if rng.random() < 0.5 else 0.0,
        "camera": camera,
        "em_gain": em_gain,
        "read_noise": float(read_noise),
        "quantum_efficiency": float(qe),
        "adu_gain": float(electrons_per_adu),
        "baseline": float(rng.choice([0.0, 100.0, 400.0, 1000.0])) + float(rng.integers(0, 50)),
        "bit_depth": int(rng.choice([12, 14, 16])) if camera != "emccd" else 16,
        "pixel_spread": float(rng.uniform(0.005, 0.05)),
        "layout": layout,
        "n_structures": int(rng.integers(3, 30) if layout == "clustered" else rng.integers(2, 12)),
        "structure_spread_px": float(
            rng.uniform(0.5, 4.0) if layout == "clustered" else rng.uniform(0.1, 0.6)
        ),
        "bleach_rate": float(rng.uniform(0.1, 0.5)),
        "n_fiducials": int(rng.integers(1, 3)) if rng.random() < 0.1 else 0,
        "fiducial_photons": float(photons * rng.uniform(3, 10)),
        # From sparse (a random fraction of the top, empty frames included) to crowded.
        "density_sweep": [
            float(rng.uniform(0, 0.3)) * high_density * per_um2,
            high_density * per_um2,
        ],
        "sweep_blocks": max(2, n_frames // 100),
        "fluorophore_density": float(max(2000.0, 2 * high_density * per_um2 * n_frames)),
        "brightness_threshold": THRESHOLD_FRACTION * photons,
    }
    return conditions


def simulation_parameters(conditions):
    """The :func:`defcon.simulate.simulate` keywords of a conditions dict."""
    params = {k: v for k, v in conditions.items() if k != "brightness_threshold"}
    if params.get("density_sweep") is not None:
        params["density_sweep"] = tuple(params["density_sweep"])
    return params


def with_overrides(conditions, overrides):
    """``conditions`` with some simulation parameters replaced.

    The brightness threshold follows an overridden ``photon_rate`` (unless it
    is overridden too).

    Parameters
    ----------
    conditions, overrides : dict

    Returns
    -------
    dict
        A new conditions dict.
    """
    overrides = overrides or {}
    result = {**conditions, **overrides}
    if "photon_rate" in overrides and "brightness_threshold" not in overrides:
        result["brightness_threshold"] = THRESHOLD_FRACTION * result["photon_rate"]
    return result


def write_conditions(conditions, path):
    """Write a conditions dict as JSON (atomically)."""
    write_json(conditions, path)


def read_conditions(path):
    """Read a conditions file written by :func:`write_conditions` (or by hand).

    Raises
    ------
    ConfigError
        The file is not a JSON object.
    """
    conditions = read_json(path, "conditions file", ConfigError)
    if not isinstance(conditions, dict):
        raise ConfigError(f"{path}: a conditions file holds one JSON object of parameters")
    return conditions
