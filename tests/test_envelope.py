"""Tests of training envelopes and the input check at prediction (defcon.envelope)."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from defcon.envelope import Envelope, EnvelopeCheck, estimate_psf_sigma
from defcon.errors import ConfigError
from defcon.networks import DEFAULT_PRETRAINED, FCN, PRETRAINED_MODELS
from defcon.simulate import simulate_stack

H, W = 48, 72  # non-square on purpose


def frames(sigma, n=64, seed=0, **kw):
    params = dict(
        psf_sigma_px=sigma, photon_rate=3000, background=30, density_sweep=(1.0, 1.0), **kw
    )
    stack, _ = simulate_stack(n + 15, H, W, seed=seed, **params)
    return stack[15:]


@pytest.mark.parametrize("sigma", [1.0, 1.6, 2.4])
def test_psf_width_is_recovered(sigma):
    estimate, n_spots = estimate_psf_sigma(frames(sigma))
    assert n_spots >= 8
    assert estimate == pytest.approx(sigma, rel=0.1)


def test_psf_estimate_ignores_background_structure_and_camera():
    estimate, _ = estimate_psf_sigma(
        frames(1.6, background_haze=2.0, background_gradient=0.8, camera="scmos", baseline=400)
    )
    assert estimate == pytest.approx(1.6, rel=0.1)


def test_no_spots_no_estimate():
    flat = np.random.default_rng(0).normal(100, 3, (8, H, W))
    assert math.isnan(estimate_psf_sigma(flat)[0])
    assert math.isnan(estimate_psf_sigma(np.zeros((2, 4, 4)))[0])


def test_check_flags_out_of_envelope_chunks_only():
    envelope = Envelope((0.7, 2.5), (0.0, 360.0))
    check = EnvelopeCheck(envelope, (H, W))
    no_density = np.zeros((64, 1, 1, 1))
    for chunk, sigma in enumerate((1.2, 3.5, 2.2)):
        index = np.arange(64 * chunk, 64 * (chunk + 1))
        check.observe(index, frames(sigma, seed=chunk))
        flags = check.flags(index, no_density)
        assert set(flags) == ({"psf_wide"} if sigma > 2.5 else {""})
    assert [c["flag"] for c in check.chunks] == ["", "psf_wide", ""]
    assert "65-128" in check.summary() and "psf" in check.summary().lower()


def test_density_flags_per_frame():
    envelope = Envelope((0.7, 2.5), (0.0, 100.0))
    check = EnvelopeCheck(envelope, (32, 32))  # a quarter of 64 x 64: 25 emitters is the top
    density = np.zeros((3, 32, 32, 1), np.float32)
    density[0, 0, 0] = 10
    density[1, 0, 0] = 30
    density[2, 0, 0] = 24
    check.observe(np.arange(3), np.zeros((3, 32, 32)))
    assert list(check.flags(np.arange(3), density)) == ["", "too_dense", ""]
    assert "1 frames are denser" in check.summary()


def test_envelope_survives_saving_and_output_changes(tmp_path):
    model = FCN(output="density", seed=0, envelope=Envelope((1.0, 2.0), (0, 50), "test"))
    model.save(tmp_path / "m.keras")
    loaded = FCN.from_file(tmp_path / "m.keras")
    assert loaded.envelope == Envelope((1.0, 2.0), (0.0, 50.0), "test")
    assert loaded.with_output("both").envelope == loaded.envelope
    assert loaded.density_to_max_count().envelope == loaded.envelope
    assert FCN(output="density", seed=0).envelope is None


@pytest.fixture(scope="module")
def wide_stack_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "wide.tif"
    tifffile.imwrite(path, frames(3.4, n=40))
    return path


def test_predict_tiff_warns_naming_frames(wide_stack_file, caplog):
    model = FCN(output="density", seed=0, envelope=Envelope((0.7, 2.5), (0, 360)))
    with caplog.at_level(logging.WARNING, logger="defcon"):
        model.predict_tiff(wide_stack_file)
    assert "wide.tif" in caplog.text and "frames 1-40" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="defcon"):
        model.predict_tiff(wide_stack_file, check_envelope=False)
    assert caplog.text == ""


def test_cli_predict_writes_flag_column(tmp_path, wide_stack_file, capsys):
    from defcon.cli import main

    model = FCN(output="density", seed=0, envelope=Envelope((0.7, 2.5), (0, 360)))
    model.save(tmp_path / "m.keras")
    counts = tmp_path / "counts.csv"
    assert (
        main(["predict", str(tmp_path / "m.keras"), str(wide_stack_file), "--counts", str(counts)])
        == 0
    )
    assert "training envelope" in capsys.readouterr().out
    table = pd.read_csv(counts)
    assert (table["flag"] == "psf_wide").all() and len(table) == 40


def test_both_pretrained_models_load_with_envelopes():
    assert DEFAULT_PRETRAINED == PRETRAINED_MODELS[0]
    for name in PRETRAINED_MODELS:
        model = FCN.pretrained(name)
        assert model.output_kind == "density" and model.envelope is not None
        assert name in model.envelope.description
    assert FCN.pretrained().envelope == FCN.pretrained(DEFAULT_PRETRAINED).envelope
    with pytest.raises(ConfigError, match="defcon-broad-2026c"):
        FCN.pretrained("defcon-2019")


def test_info_shows_the_envelope(tmp_path):
    from defcon.info import describe

    model = FCN(output="density", seed=0, envelope=Envelope((1.0, 2.0), (0, 50), "lab data"))
    model.save(tmp_path / "m.keras")
    text = describe(tmp_path / "m.keras")
    assert "PSF sigma 1-2 px, 0-50 emitters per 64 x 64" in text and "lab data" in text
    FCN(output="density", seed=0).save(tmp_path / "plain.keras")
    assert "not recorded" in describe(tmp_path / "plain.keras")
