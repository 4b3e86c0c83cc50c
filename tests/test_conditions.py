"""Tests of imaging-condition sampling (defcon.conditions) and the scene models (defcon.scene)."""

import json
import math

import numpy as np
import pytest

from defcon import conditions as C
from defcon import scene
from defcon.errors import ConfigError
from defcon.groundtruth import count_per_frame, density_stack
from defcon.simulate import SimulationParameters, simulate_stack

H, W = 40, 56  # non-square on purpose


def pixel_nm(c):
    return c["camera_pixel_nm"] / c["magnification"]


@pytest.fixture(scope="module")
def drawn():
    return [C.sample_conditions(seed) for seed in range(200)]


def test_draws_respect_the_declared_ranges(drawn):
    r = C.TRAINING_RANGES
    for c in drawn:
        assert r["psf_sigma_px"][0] <= c["psf_sigma_px"] <= r["psf_sigma_px"][1]
        assert r["pixel_size_nm"][0] <= pixel_nm(c) <= r["pixel_size_nm"][1] + 1e-9
        assert r["photon_rate"][0] <= c["photon_rate"] <= r["photon_rate"][1]
        assert r["background"][0] <= c["background"] <= r["background"][1]
        assert c["camera"] in scene.CAMERAS and c["layout"] in scene.LAYOUTS
        assert (c["em_gain"] is not None) == (c["camera"] == "emccd")
        low, high = c["density_sweep"]
        per_frame = high * (pixel_nm(c) / 1000) ** 2 * C.FRAME_PX
        assert 0 <= low <= high and per_frame <= r["emitters_per_frame"][1] + 1e-6
        assert c["brightness_threshold"] == pytest.approx(C.THRESHOLD_FRACTION * c["photon_rate"])
        # Every stack has visible spots: the peak SNR floor holds (or the range's middle).
        snr = C.peak_snr(
            c["photon_rate"],
            c["psf_sigma_px"],
            c["background"],
            c["read_noise"] / (c["em_gain"] or 1),
        )
        assert snr >= r["min_peak_snr"][0] * 0.999 or c["photon_rate"] >= r["photon_rate"][1] / 2
        SimulationParameters(**C.simulation_parameters(c))  # valid parameters


def test_draws_cover_the_ranges(drawn):
    sigmas = [c["psf_sigma_px"] for c in drawn]
    assert min(sigmas) < 0.8 and max(sigmas) > 2.2
    assert {c["camera"] for c in drawn} == set(scene.CAMERAS)
    assert {c["layout"] for c in drawn} == set(scene.LAYOUTS)
    photons = [c["photon_rate"] for c in drawn]
    assert min(photons) < 500 and max(photons) > 10_000


def test_same_seed_same_conditions_and_overrides():
    assert C.sample_conditions(7) == C.sample_conditions(7)
    assert C.sample_conditions(7) != C.sample_conditions(8)
    narrow = [
        C.sample_conditions(s, ranges={"psf_sigma_px": (1.0, 1.2, "uniform")}) for s in range(20)
    ]
    assert all(1.0 <= c["psf_sigma_px"] <= 1.2 for c in narrow)


def test_conditions_file_round_trip_and_errors(tmp_path):
    c = C.sample_conditions(3)
    C.write_conditions(c, tmp_path / "c.json")
    assert C.read_conditions(tmp_path / "c.json") == json.loads(json.dumps(c))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="bad.json"):
        C.read_conditions(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="missing.json"):
        C.read_conditions(tmp_path / "missing.json")


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_drawn_stack_truth_matches_image(seed):
    """The density target of each frame sums to the emitters it counts, and the
    image carries the photons of the emitters logged for it."""
    c = C.sample_conditions(seed, n_frames=12)
    params = C.simulation_parameters(c)
    stack, truth = simulate_stack(12, H, W, seed=seed, **params)
    assert stack.shape == (12, H, W) and stack.dtype == np.uint16
    assert stack.max() <= 2 ** c["bit_depth"] - 1
    threshold = c["brightness_threshold"]
    counts = count_per_frame(truth, 12, threshold, height=H, width=W)
    density = density_stack(truth, 12, H, W, sigma=1.0, brightness_threshold=threshold)
    # Emitters near the edge lose part of their Gaussian: compare frames by their inner emitters.
    inner = truth[(truth.x > 5) & (truth.x < W - 5) & (truth.y > 5) & (truth.y < H - 5)]
    inner_counts = count_per_frame(inner, 12, threshold, height=H, width=W)
    sums = density.sum(axis=(1, 2))
    assert np.all(sums >= inner_counts - 1e-3) and np.all(sums <= counts + 1e-3)
    # Noise-free, the image above the background holds the logged photons (times QE).
    quiet = dict(
        params,
        shot_noise=False,
        background=0.0,
        read_noise=0.0,
        dark_current=0.0,
        baseline=0.0,
        adu_gain=1.0,
        camera="ccd",
        em_gain=None,
        bit_depth=16,
        quantum_efficiency=1.0,
    )
    image, logged = simulate_stack(12, H, W, seed=seed, **quiet)
    frames = range(1, 13)
    total = logged.groupby("frame").brightness.sum().reindex(frames, fill_value=0).to_numpy()
    far = logged[(logged.x > 12) & (logged.x < W - 12) & (logged.y > 12) & (logged.y < H - 12)]
    inner = far.groupby("frame").brightness.sum().reindex(frames, fill_value=0).to_numpy()
    summed = image.sum(axis=(1, 2), dtype=np.float64)
    rounding = 0.5 * H * W + 1
    assert np.all(summed <= total + rounding) and np.all(summed >= 0.99 * inner - rounding)


def test_per_emitter_defocus_and_brightness_spread():
    def brightness(**kw):
        _, truth = simulate_stack(
            20, H, W, seed=2, density_sweep=(1.0, 1.0), shot_noise=False, **kw
        )
        return truth

    spread = brightness(defocus_nm=300, photon_spread=0.8)
    assert spread.z.abs().max() <= 300 and spread.z.std() > 50
    plain = brightness()
    assert (plain.z == 0).all()
    # On-times spread brightness in both; the per-emitter factor adds to it.
    assert spread.brightness.max() > 1.5 * plain.brightness.max()


def test_wider_psf_spreads_photons():
    def peak_fraction(**kw):
        image, _ = simulate_stack(
            1,
            32,
            32,
            seed=0,
            n_fiducials=1,
            fiducial_photons=1e4,
            activation_rate=0.0,
            shot_noise=False,
            background=0.0,
            read_noise=0.0,
            dark_current=0.0,
            baseline=0.0,
            **kw,
        )
        return image.max() / image.sum()

    assert peak_fraction(psf_sigma_px=0.8) > 2.5 * peak_fraction(psf_sigma_px=2.0)


# ------------------------------------------------------------------ scene
def test_layouts_stay_in_the_frame_and_keep_their_structure():
    rng = np.random.default_rng(0)
    for kind in scene.LAYOUTS:
        layout = scene.Layout(kind, H, W, rng, n_structures=3, spread_px=0.3)
        x, y = layout.positions(5000, rng)
        assert x.shape == (5000,) and (x >= 0).all() and (x < W).all()
        assert (y >= 0).all() and (y < H).all()
        occupied = np.histogram2d(y, x, bins=(H // 4, W // 4))[0]
        fraction_empty = (occupied == 0).mean()
        if kind == "uniform":
            assert fraction_empty == 0
        else:  # clusters and filaments leave most of the frame empty
            assert fraction_empty > 0.4
    with pytest.raises(ConfigError, match="layout"):
        scene.Layout("spiral", H, W, rng)


def test_background_map_mean_and_structure():
    rng = np.random.default_rng(1)
    flat = scene.background_map(H, W, 50.0, rng)
    np.testing.assert_allclose(flat, 50.0)
    structured = scene.background_map(H, W, 50.0, rng, gradient=0.8, haze=2.0)
    assert structured.shape == (H, W) and structured.mean() == pytest.approx(50.0)
    assert structured.min() >= 0 and np.ptp(structured) > 20


def test_cameras_offsets_gain_and_saturation():
    rng = np.random.default_rng(2)
    electrons = np.full((H, W), 100.0)
    ccd = scene.Camera("ccd", H, W, rng, read_noise=0.0, baseline=100, adu_gain=2.0)
    np.testing.assert_array_equal(ccd.record(electrons, rng), 150)
    scmos = scene.Camera("scmos", H, W, rng, read_noise=1.5, baseline=100, pixel_spread=0.05)
    assert scmos.offset.std() > 1 and scmos.adu_gain.std() > 0.01 and scmos.read_noise.std() > 0
    frames = np.stack([scmos.record(np.zeros((H, W)), rng) for _ in range(50)])
    # The per-pixel offset pattern is fixed: the same in every frame.
    assert np.corrcoef(frames[:25].mean(0).ravel(), frames[25:].mean(0).ravel())[0, 1] > 0.9
    saturating = scene.Camera("ccd", H, W, rng, read_noise=0.0, bit_depth=12)
    assert saturating.record(np.full((H, W), 1e6), rng).max() == 4095
    emccd = scene.Camera("emccd", H, W, rng, em_gain=100, read_noise=0.0, baseline=0)
    out = emccd.record(np.full((H, W), 10.0), rng).astype(float)
    # Gamma(10, 100): mean 1000, excess noise: variance 2x Poisson's after gain.
    assert out.mean() == pytest.approx(1000, rel=0.05)
    with pytest.raises(ConfigError, match="em_gain"):
        scene.Camera("emccd", H, W, rng)


def test_simulation_parameters_refuse_bad_camera_and_layout():
    for bad in (
        dict(camera="film"),
        dict(layout="grid"),
        dict(camera="emccd"),
        dict(bit_depth=20),
        dict(psf_sigma_px=-1.0),
    ):
        with pytest.raises(ConfigError):
            SimulationParameters(**bad)
    assert SimulationParameters(psf_sigma_px=1.7).sigma_px == 1.7
    assert math.isclose(SimulationParameters().sigma_px, 0.21 * 600 / 1.3 / 100)


def test_cli_simulate_randomize_and_conditions_file(tmp_path, capsys):
    from defcon.cli import main

    args = ["--frames", "6", "--height", str(H), "--width", str(W), "--seed", "3"]
    assert main(["simulate", "--randomize", *args, "--out", str(tmp_path / "a")]) == 0
    assert "build with --brightness-threshold" in capsys.readouterr().out
    drawn = C.read_conditions(tmp_path / "a" / "conditions.json")
    assert drawn == json.loads(json.dumps(C.sample_conditions(3, n_frames=6)))
    # The same conditions file and seed give the same stack.
    assert (
        main(
            [
                "simulate",
                "--conditions",
                str(tmp_path / "a" / "conditions.json"),
                *args,
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    assert (tmp_path / "a" / "stack.tif").read_bytes() == (
        tmp_path / "b" / "stack.tif"
    ).read_bytes()
    # --set overrides a drawn value, and the threshold follows the brightness.
    assert (
        main(
            [
                "simulate",
                "--randomize",
                *args,
                "--set",
                "photon_rate=1000",
                "--out",
                str(tmp_path / "c"),
            ]
        )
        == 0
    )
    changed = C.read_conditions(tmp_path / "c" / "conditions.json")
    assert changed["photon_rate"] == 1000 and changed["brightness_threshold"] == pytest.approx(100)
