"""Tests of the SMLM stack simulator (defcon.simulate)."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import tifffile

from defcon import simulate as sim
from defcon.errors import ConfigError, DefconError

H, W = 24, 40  # non-square on purpose
NOISE_FREE = dict(shot_noise=False, background=0.0, read_noise=0.0, dark_current=0.0)


def counts_per_frame(truth, n_frames):
    return truth.groupby("frame").size().reindex(range(1, n_frames + 1), fill_value=0).to_numpy()


def test_same_seed_same_stack_other_seed_differs():
    a_stack, a_truth = sim.simulate_stack(15, H, W, seed=3, density_sweep=(0.5, 1.5))
    b_stack, b_truth = sim.simulate_stack(15, H, W, seed=3, density_sweep=(0.5, 1.5))
    c_stack, c_truth = sim.simulate_stack(15, H, W, seed=4, density_sweep=(0.5, 1.5))
    np.testing.assert_array_equal(a_stack, b_stack)
    pd.testing.assert_frame_equal(a_truth, b_truth)
    assert not np.array_equal(a_stack, c_stack)
    assert not a_truth[["x", "y"]].equals(c_truth[["x", "y"]])


def test_stack_and_ground_truth_layout_non_square():
    n = 30
    stack, truth = sim.simulate_stack(n, H, W, seed=1, density_sweep=(1.0, 2.0))
    assert stack.shape == (n, H, W) and stack.dtype == np.uint16
    assert list(truth.columns) == ["frame", "id", "x", "y", "z", "brightness"]
    assert truth["frame"].dtype == np.int64 and truth["id"].dtype == np.int64
    assert len(truth) > 100
    assert truth["frame"].between(1, n).all()
    assert truth["x"].between(0, W, inclusive="left").all()
    assert truth["y"].between(0, H, inclusive="left").all()
    assert truth["x"].max() > H  # x runs along the longer side: it is the column
    assert (truth["z"] == 0).all() and (truth["brightness"] > 0).all()
    assert not truth.duplicated(["frame", "id"]).any()
    assert truth.equals(truth.sort_values(["frame", "id"]))
    # An emitter keeps its position from frame to frame.
    assert (truth.groupby("id")[["x", "y"]].nunique() == 1).all().all()


def test_image_is_bright_where_the_ground_truth_has_emitters():
    stack, truth = sim.simulate_stack(20, H, W, seed=2, density_sweep=(0.3, 0.6))
    bright = truth[truth["brightness"] >= 1000]
    assert len(bright) > 10
    values = stack[
        bright["frame"] - 1, np.floor(bright["y"]).astype(int), np.floor(bright["x"]).astype(int)
    ].astype(float)
    background = np.median(stack[bright["frame"] - 1], axis=(1, 2))
    assert (values > background + 40).all()


def test_render_emitters_follows_the_pixel_convention():
    x, y = np.array([10.5, 0.0]), np.array([8.25, 0.0])
    image = sim.render_emitters(x[:1], y[:1], np.array([1000.0]), H, W, sigma=1.2)
    assert np.unravel_index(image.argmax(), image.shape) == (8, 10)
    rows, cols = np.indices(image.shape)
    # The +-4 sigma window loses about 1e-4 of the photons.
    assert image.sum() == pytest.approx(1000.0, rel=2e-4)
    assert (image * (cols + 0.5)).sum() / image.sum() == pytest.approx(10.5, abs=1e-6)
    assert (image * (rows + 0.5)).sum() / image.sum() == pytest.approx(8.25, abs=1e-3)
    # An emitter on the corner loses three quarters of its photons outside the frame.
    corner = sim.render_emitters(x[1:], y[1:], np.array([1000.0]), H, W, sigma=1.2)
    assert corner.sum() == pytest.approx(250.0, rel=1e-3)


@pytest.mark.parametrize(
    "em_gain, shot_noise, rel", [(None, False, 0.02), (30.0, False, 0.02), (None, True, 0.1)]
)
def test_isolated_emitter_total_signal_matches_its_brightness(em_gain, shot_noise, rel):
    qe, adu_gain, baseline = 0.8, 2.0, 100.0
    stack, truth = sim.simulate_stack(
        60,
        H,
        W,
        seed=5,
        activation_rate=2e-5,
        baseline=baseline,
        quantum_efficiency=qe,
        adu_gain=adu_gain,
        em_gain=em_gain,
        **dict(NOISE_FREE, shot_noise=shot_noise),
    )
    alone = truth.groupby("frame").filter(lambda rows: len(rows) == 1)
    inside = alone["x"].between(6, W - 6) & alone["y"].between(6, H - 6)
    alone = alone[inside & (alone["brightness"] > 200)]
    assert len(alone) >= 3
    for row in alone.itertuples():
        total = (stack[row.frame - 1].astype(float) - baseline).sum()
        expected = row.brightness * qe * (em_gain or 1.0) / adu_gain
        assert total == pytest.approx(expected, rel=rel, abs=10)  # rounding to ADU


def test_partial_on_times_give_less_than_a_full_frame_of_photons():
    rate = 2000.0
    _, truth = sim.simulate_stack(
        40, H, W, seed=6, photon_rate=rate, density_sweep=(1.0, 1.0), **NOISE_FREE
    )
    b = truth["brightness"]
    assert (b <= rate + 1e-9).all()
    assert (b < 0.99 * rate).mean() > 0.2  # switched on or off during the frame
    assert (b > rate - 1e-6).mean() > 0.2  # on for the whole frame
    # With shot noise, partial frames still stand out from Poisson scatter.
    _, noisy = sim.simulate_stack(40, H, W, seed=6, photon_rate=rate, density_sweep=(1.0, 1.0))
    assert (noisy["brightness"] < rate - 5 * math.sqrt(rate)).mean() > 0.2


def test_default_sweep_spans_empty_to_crowded_64x64_frames():
    n = 300
    _, truth = sim.simulate_stack(n, 64, 64, seed=0, density_sweep=True)
    counts = counts_per_frame(truth, n)
    assert counts.min() == 0
    assert counts.max() >= 60
    assert (
        counts[: n // 3].mean() < counts[n // 3 : 2 * n // 3].mean() < counts[2 * n // 3 :].mean()
    )


@pytest.mark.parametrize(
    "extra",
    [
        dict(sweep_mode="log", density_sweep=(0.05, 1.5)),
        dict(sweep_blocks=3, density_sweep=(0.0, 1.5)),
    ],
)
def test_log_and_block_sweeps_increase(extra):
    n = 90
    _, truth = sim.simulate_stack(n, 32, 48, seed=7, **extra)
    counts = counts_per_frame(truth, n)
    assert counts[:20].mean() < counts[-20:].mean() / 3


def test_steady_sweep_density_matches_its_target():
    n, density = 200, 1.0
    _, truth = sim.simulate_stack(n, 64, 64, seed=8, density_sweep=(density, density))
    target = density * 64 * 64 * 0.1**2  # 100 nm pixels by default
    assert counts_per_frame(truth, n)[60:].mean() == pytest.approx(target, rel=0.15)


def test_fiducials_are_always_on_and_optionally_logged():
    _, truth = sim.simulate_stack(5, H, W, seed=9, fluorophore_density=0.0, n_fiducials=2)
    assert sorted(truth["id"].unique()) == [1, 2]
    assert (counts_per_frame(truth, 5) == 2).all()
    assert truth["brightness"].between(19000, 21000).all()
    stack, quiet = sim.simulate_stack(
        5, H, W, seed=9, fluorophore_density=0.0, n_fiducials=2, log_fiducials=False
    )
    assert quiet.empty and list(quiet.columns) == list(truth.columns)
    assert stack.max() > 1000  # still in the image


def test_simulate_writes_an_imagej_tiff_and_a_sass_frame_logger(tmp_path):
    n, seed = 12, 5
    out = tmp_path / "run"
    summary = sim.simulate(out, n, H, W, seed=seed, progress=True, density_sweep=(0.5, 2.0))
    stack, truth = sim.simulate_stack(n, H, W, seed=seed, density_sweep=(0.5, 2.0))

    with tifffile.TiffFile(summary["stack"]) as tif:
        written = tif.asarray()
        assert tif.is_imagej and tif.imagej_metadata["frames"] == n
    assert written.dtype == np.uint16 and written.shape == (n, H, W)
    np.testing.assert_array_equal(written, stack)

    lines = summary["frame_logger"].read_text().splitlines()
    assert lines[0] == "frame,id,x,y,z,brightness"
    row = re.compile(r"^\d+,\d+,\d+\.\d{4},\d+\.\d{4},0\.0000,\d+\.0000$")
    assert len(lines) == len(truth) + 1 and all(row.match(line) for line in lines[1:])
    logged = pd.read_csv(summary["frame_logger"])
    assert logged["frame"].min() >= 1 and logged["frame"].max() <= n
    np.testing.assert_array_equal(logged[["frame", "id"]], truth[["frame", "id"]])
    np.testing.assert_allclose(
        logged[["x", "y", "brightness"]], truth[["x", "y", "brightness"]], atol=5e-5
    )

    counts = counts_per_frame(truth, n)
    assert summary["n_frames"] == n and (summary["height"], summary["width"]) == (H, W)
    assert summary["n_emitters"] == truth["id"].nunique()
    assert summary["n_localizations"] == len(truth)
    assert summary["emitters_per_frame_mean"] == pytest.approx(counts.mean())
    assert (summary["emitters_per_frame_min"], summary["emitters_per_frame_max"]) == (
        counts.min(),
        counts.max(),
    )
    assert sorted(p.name for p in out.iterdir()) == ["frame_logger.csv", "stack.tif"]


def test_failed_simulation_leaves_no_files_and_keeps_old_ones(tmp_path, monkeypatch):
    camera, calls = sim._apply_camera, []

    def failing_camera(*args):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("camera unplugged")
        return camera(*args)

    monkeypatch.setattr(sim, "_apply_camera", failing_camera)
    with pytest.raises(RuntimeError, match="unplugged"):
        sim.simulate(tmp_path / "new", 10, H, W, seed=1)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())

    old = tmp_path / "old"
    old.mkdir()
    (old / "stack.tif").write_bytes(b"previous stack")
    (old / "frame_logger.csv").write_text("previous csv")
    calls.clear()
    with pytest.raises(RuntimeError):
        sim.simulate(old, 10, H, W, seed=1)
    assert (old / "stack.tif").read_bytes() == b"previous stack"
    assert (old / "frame_logger.csv").read_text() == "previous csv"
    assert sorted(p.name for p in old.iterdir()) == ["frame_logger.csv", "stack.tif"]


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(n_frames=0), "n_frames"),
        (dict(n_frames=2.5), "n_frames"),
        (dict(height=0), "height"),
        (dict(width=-3), "width"),
        (dict(bleach_rate=-0.1), "bleach_rate"),
        (dict(activation_rate=-1e-5), "activation_rate"),
        (dict(dark2_return_rate=float("nan")), "dark2_return_rate"),
        (dict(photon_rate="2000"), "photon_rate"),
        (dict(background=-1), "background"),
        (dict(quantum_efficiency=1.5), "quantum_efficiency"),
        (dict(quantum_efficiency=0), "quantum_efficiency"),
        (dict(em_gain=0.5), "em_gain"),
        (dict(magnification=0), "magnification"),
        (dict(adu_gain=0), "adu_gain"),
        (dict(n_fiducials=-1), "n_fiducials"),
        (dict(shot_noise="yes"), "shot_noise"),
        (dict(density_sweep=(1.0,)), "density_sweep"),
        (dict(density_sweep=(-1.0, 1.0)), "density_sweep"),
        (dict(density_sweep=(0.0, 1.0), sweep_mode="log"), "density_sweep"),
        (dict(density_sweep=True, sweep_mode="cubic"), "sweep_mode"),
        (dict(density_sweep=True, sweep_blocks=1), "sweep_blocks"),
        (dict(density_sweep=True, bleach_rate=0.0), "bleach_rate"),
        (dict(frames_per_second=10), "frames_per_second"),
    ],
)
def test_bad_parameters_raise_a_defcon_error_naming_them(kwargs, name, tmp_path):
    args = dict(n_frames=3, height=H, width=W)
    for key in ("n_frames", "height", "width"):
        if key in kwargs:
            args[key] = kwargs.pop(key)
    with pytest.raises(DefconError, match=name) as info:
        sim.simulate_stack(seed=0, **args, **kwargs)
    assert isinstance(info.value, ValueError)
    with pytest.raises(DefconError, match=name):
        sim.simulate(tmp_path, seed=0, **args, **kwargs)
    assert not any(tmp_path.iterdir())


def test_a_measured_psf_renders_like_the_gaussian_it_samples():
    # The pixel-integrated Gaussian sampled every 1/4 px, as calibrate measures a PSF.
    from scipy.special import erf

    from defcon.scene import EmpiricalPSF
    from defcon.simulate import render_emitters

    sigma, s, half = 1.4, 4, 6
    d = np.arange(-half * s, half * s + 1) / s
    edge = lambda c: 0.5 * (erf((d + 0.5) / (c * 2**0.5)) - erf((d - 0.5) / (c * 2**0.5)))  # noqa: E731
    psf = EmpiricalPSF(np.outer(edge(sigma), edge(sigma)), s, sigma)
    rng = np.random.default_rng(3)
    x, y, photons = rng.uniform(8, 48, 20), rng.uniform(8, 32, 20), rng.uniform(500, 2000, 20)
    gaussian = render_emitters(x, y, photons, 40, 56, sigma)
    measured = render_emitters(x, y, photons, 40, 56, sigma, psf)
    assert measured.sum() == pytest.approx(photons.sum(), rel=1e-6)
    # Bilinear interpolation between samples 1/4 px apart: within 1 % of the peak.
    np.testing.assert_allclose(measured, gaussian, atol=1e-2 * gaussian.max())
    # Scaled to a wider emitter, it is as wide as that emitter's Gaussian.
    wide = render_emitters(x, y, photons, 40, 56, 2.0, psf)
    gaussian_wide = render_emitters(x, y, photons, 40, 56, 2.0)
    np.testing.assert_allclose(wide, gaussian_wide, atol=0.02 * wide.max())


def test_a_psf_kernel_that_is_not_a_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="psf_kernel: samples must be a square grid"):
        kernel = {"samples": [[1.0, 2.0]], "oversampling": 4, "sigma_px": 1}
        sim.SimulationParameters(psf_kernel=kernel)
    with pytest.raises(ConfigError, match="psf_kernel: expected a dict"):
        sim.SimulationParameters(psf_kernel=[[1.0]])
