"""Tests of microscope calibration (defcon.calibrate) on simulated stacks of known conditions."""

import json

import numpy as np
import pytest
import tifffile

from defcon import calibrate as K
from defcon import conditions as C
from defcon.cli import main
from defcon.errors import CalibrationError, DefconError
from defcon.simulate import simulate, simulate_stack

H, W = 48, 64  # non-square on purpose
CAMERAS = {
    "ccd": {"camera": "ccd", "adu_gain": 2.0, "read_noise": 8.0},
    "emccd": {"camera": "emccd", "em_gain": 100.0, "adu_gain": 20.0, "read_noise": 50.0},
    "scmos": {"camera": "scmos", "adu_gain": 0.5, "read_noise": 1.6},
}


def conditions(camera, **extra):
    return {
        "psf_sigma_px": 1.5,
        "photon_rate": 3000.0,
        "background": 30.0,
        "baseline": 400.0,
        "quantum_efficiency": 0.9,
        "density_sweep": (0.2, 0.8),
        **CAMERAS[camera],
        **extra,
    }


def true_gain(p):
    """ADU per detected photoelectron."""
    return (p.get("em_gain") or 1.0) / p["adu_gain"]


def dark_frames(p, seed, n=40):
    """Dark frames of the camera of a stack simulated with ``p`` and ``seed`` (same pixel maps)."""
    dark = {**p, "photon_rate": 0.0, "fiducial_photons": 0.0, "background": 0.0}
    return simulate_stack(n, H, W, seed=seed, **{**dark, "density_sweep": None})[0]


def assert_recovered(result, p, offset_adu=None, background=0.15):
    """Within 5 % (PSF, gain, offset) and 10 % (photons) of the truth.

    Without dark frames the offset comes from the photon-transfer intercept
    and an assumed read noise: within ``offset_adu`` ADU (not 5 %), and the
    background (photoelectrons above the offset) within ``background``.
    """
    assert result["psf_sigma_px"] == pytest.approx(p["psf_sigma_px"], rel=0.05)
    assert result["adu_per_electron"] == pytest.approx(true_gain(p), rel=0.05)
    if offset_adu is None:
        assert result["offset_adu"] == pytest.approx(p["baseline"], rel=0.05)
    else:
        assert result["offset_adu"] == pytest.approx(p["baseline"], abs=offset_adu)
    detected = p["photon_rate"] * p["quantum_efficiency"]
    assert result["photons_full_frame"] == pytest.approx(detected, rel=0.10)
    assert not [w for w in result["warnings"] if "photons" in w]
    bg = p["background"] * p["quantum_efficiency"]
    assert result["background_electrons"] == pytest.approx(bg, rel=background)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_recovers_known_conditions_with_dark_frames(camera):
    p = conditions(camera)
    stack, _ = simulate_stack(400, H, W, seed=1, **p)
    result = K.calibrate(stack, dark=dark_frames(p, seed=1), camera=camera)
    assert result["offset_source"] == "dark frames"
    assert_recovered(result, p)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_recovers_known_conditions_without_dark_frames(camera):
    p = conditions(camera, psf_sigma_px=1.2, baseline=100.0)
    stack, _ = simulate_stack(400, H, W, seed=2, **p)
    result = K.calibrate(stack, camera=camera)
    assert result["offset_source"] == "noise skew, assumed read noise"
    assert_recovered(result, p, offset_adu=10.0, background=0.4)


def test_gain_is_blind_to_the_light_of_blinking_neighbours_and_merged_spots_warn():
    # Bright, wide, crowded spots: no pixel is free of their tails, which
    # switch with the emitters. Before the frame differences were high-passed
    # this read the gain 81 % high; the spots merge, so photons are flagged.
    p = conditions(
        "emccd", em_gain=30.0, adu_gain=17.0, read_noise=77.0, psf_sigma_px=2.1,
        photon_rate=14500.0, photon_spread=0.3, background=90.0, baseline=140.0,
        density_sweep=(0.8, 2.8), bleach_rate=0.5,
    )  # fmt: skip
    stack, _ = simulate_stack(400, H, W, seed=1, **p)
    result = K.calibrate(stack, dark=dark_frames(p, seed=1), camera="emccd")
    assert result["adu_per_electron"] == pytest.approx(true_gain(p), rel=0.05)
    assert result["width_photons_correlation"] > K.TRUSTED_WIDTH_CORRELATION
    assert any("brighter spots are wider" in w for w in result["warnings"])


def test_emccd_gain_on_a_dim_background_with_dark_frames():
    # About 1 photoelectron per pixel through an EM gain of 200: most of the
    # noise variance lies in the register's long tail, which a 4-sigma clip
    # would cut (the gain then read 13 % low).
    p = conditions("emccd", em_gain=200.0, adu_gain=80.0, read_noise=20.0, background=1.0)
    stack, _ = simulate_stack(300, H, W, seed=3, **p)
    result = K.calibrate(stack, dark=dark_frames(p, seed=3), camera="emccd")
    assert result["adu_per_electron"] == pytest.approx(true_gain(p), rel=0.05)


def test_photons_near_the_detection_limit_warn():
    p = conditions(
        "ccd", adu_gain=4.0, psf_sigma_px=1.0, photon_rate=350.0, photon_spread=0.4,
        background=70.0, density_sweep=(0.5, 2.0),
    )  # fmt: skip
    stack, _ = simulate_stack(400, H, W, seed=1, **p)
    result = K.calibrate(stack, dark=dark_frames(p, seed=1), camera="ccd")
    limit = result["detection_limit_photons"]
    assert result["photons_full_frame"] < K.TRUSTED_LIMIT_RATIO * limit
    assert any("near the detection limit" in w for w in result["warnings"])


def test_sustained_spots_are_seen_in_the_frames_before_and_after():
    peaks = np.zeros((5, 10, 12), bool)
    peaks[0:3, 4, 5] = True  # frames 0-2: the middle one is sustained
    peaks[3, 4, 6] = True  # frame 3 alone (frame 2's peak is 1 px away, frame 4 has none)
    spots = np.array([[1, 4, 5], [0, 4, 5], [3, 4, 6], [2, 4, 5]])
    pairs = np.array([[0, 1], [1, 2], [2, 3], [3, 4]])
    assert K._sustained(spots, peaks, pairs).tolist() == [True, False, False, True]
    # Frames 1 and 2 not consecutive in the stack (a gap in the sample): 1 is not sustained.
    assert K._sustained(spots, peaks, pairs[[0, 2, 3]]).tolist() == [False, False, False, False]


def test_bad_frames_are_left_out():
    p = conditions("ccd", bit_depth=12)
    stack, _ = simulate_stack(400, H, W, seed=3, **p)
    stack[5] = 0
    stack[50] = 4095  # saturated
    stack[60, :10] = 4095
    result = K.calibrate(stack, dark=dark_frames(p, seed=3), camera="ccd")
    assert result["bad_frames"] == [5, 50, 60]
    assert result["bit_depth"] == 12 and (result["height"], result["width"]) == (H, W)
    assert_recovered(result, p)


def test_too_few_spots_is_a_calibration_error():
    p = conditions("ccd", fluorophore_density=0.0, density_sweep=None)
    stack, _ = simulate_stack(20, H, W, seed=4, **p)
    with pytest.raises(CalibrationError, match="array: only [0-9] isolated spots") as err:
        K.calibrate(stack)
    assert isinstance(err.value, DefconError)


def test_pixel_size_from_imagej_and_ome_metadata(tmp_path):
    frames = np.zeros((2, 16, 16), np.uint16)
    tifffile.imwrite(
        tmp_path / "ij.tif", frames, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
        metadata={"unit": "um", "axes": "TYX"},
    )  # fmt: skip
    tifffile.imwrite(
        tmp_path / "ome.ome.tif", frames, metadata={"axes": "TYX", "PhysicalSizeX": 0.107}
    )
    tifffile.imwrite(tmp_path / "bare.tif", frames)
    assert K.tiff_pixel_size_nm(tmp_path / "ij.tif") == pytest.approx(160.0)
    assert K.tiff_pixel_size_nm(tmp_path / "ome.ome.tif") == pytest.approx(107.0)
    assert K.tiff_pixel_size_nm(tmp_path / "bare.tif") is None


def test_cli_calibrate_then_simulate_like(tmp_path, capsys):
    p = conditions("ccd")
    simulate(tmp_path / "real", 150, H, W, seed=5, **p)
    calib = tmp_path / "calib.json"
    argv = ["--quiet", "calibrate", str(tmp_path / "real" / "stack.tif"), "--out", str(calib)]
    assert main([*argv, "--pixel-size", "120"]) == 0
    saved = json.loads(calib.read_text())
    assert saved["pixel_size_nm"] == 120.0 and not any(k.startswith("_") for k in saved)
    assert (tmp_path / "calib.png").stat().st_size > 10_000
    like = tmp_path / "like"
    assert main(["--quiet", "simulate", "--like", str(calib), "--frames", "150"]
                + ["--height", str(H), "--width", str(W), "--out", str(like)]) == 0  # fmt: skip
    drawn = json.loads((like / "conditions.json").read_text())
    assert drawn["psf_sigma_px"] == pytest.approx(saved["psf_sigma_px"], rel=0.25)
    assert drawn["camera_pixel_nm"] / drawn["magnification"] == pytest.approx(120.0)
    # The simulated stack calibrates back to about the same microscope. Without
    # dark frames and with a uniform background, the gain of 150 frames rests on
    # spot residuals alone: within 10 % or 3 of its reported standard errors.
    again = K.calibrate(like / "stack.tif")
    (gain, se), *_ = again["gain_sources"].values()
    tolerance = max(0.1 * saved["adu_per_electron"], 3 * se)
    assert again["adu_per_electron"] == pytest.approx(saved["adu_per_electron"], abs=tolerance)
    assert again["offset_adu"] == pytest.approx(saved["offset_adu"], rel=0.05)
    assert again["psf_sigma_px"] == pytest.approx(drawn["psf_sigma_px"], rel=0.05)


def test_cli_refuses_a_file_that_is_not_a_calibration(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["simulate", "--like", str(bad), "--out", str(tmp_path / "x")]) == 1
    assert "bad.json: not a calibration file" in capsys.readouterr().err


def test_measured_psf_matches_the_simulated_one_and_simulate_like_renders_it(tmp_path):
    p = conditions("ccd")
    stack, _ = simulate_stack(150, H, W, seed=1, **p)
    result = K.calibrate(stack, camera="ccd")
    kernel = result["psf_kernel"]
    samples, s = np.array(kernel["samples"]), kernel["oversampling"]
    assert samples.sum() / s**2 == pytest.approx(1.0, rel=1e-6)
    centre = samples.shape[0] // 2
    profile = samples[centre, centre::s] / samples[centre, centre]
    gaussian = np.exp(-(np.arange(len(profile)) ** 2) / (2 * p["psf_sigma_px"] ** 2))
    np.testing.assert_allclose(profile[:5], gaussian[:5], atol=0.06)
    # simulate --like renders with it.
    drawn = K.like_conditions(result, 0)
    assert drawn["psf_kernel"] == kernel
    like, _ = simulate_stack(5, H, W, seed=2, **C.simulation_parameters(drawn))
    assert like.shape == (5, H, W)
