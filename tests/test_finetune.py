"""The fine-tuning recipe's parts: many simulated stacks built into one training set,
``InitialModel = pretrained``, the shipped fine-tuning config."""

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from defcon import conditions as C
from defcon.calibrate import like_conditions
from defcon.cli import main
from defcon.config import read_config
from defcon.errors import OverwriteError
from defcon.groundtruth import count_per_frame
from defcon.resources import PRETRAINED_MODELS, model_file, shipped_model_file
from defcon.simulated_sets import simulate_training_set

PROJECT = Path(__file__).resolve().parents[1]
H, W = 40, 56


def test_simulated_training_set_holds_every_stack_with_its_own_threshold(tmp_path):
    drawn = {seed: C.sample_conditions(seed, n_frames=12) for seed in (5, 6, 7)}
    path = simulate_training_set(
        drawn.get, tmp_path / "sim", tmp_path / "compact.h5", 3, 12, H, W, seed=5
    )
    with h5py.File(path, "r") as f:
        assert f["input/input"].shape == (36, H, W, 1)
        total = f["target/target"][()].sum()
    with h5py.File(tmp_path / "sim" / "training.h5", "r") as f:
        sums = {name: f["target"][name][()].sum() for name in f["target"]}
    assert sorted(sums) == ["stack-001", "stack-002", "stack-003"]
    for k, seed in enumerate((5, 6, 7)):
        folder = tmp_path / "sim" / f"stack-{k + 1:03d}"
        written = C.read_conditions(folder / "conditions.json")
        assert written == json.loads(json.dumps(drawn[seed]))
        # The targets count the emitters above this stack's threshold (less mass spilt
        # over the frame edges), not a shared one.
        expected = count_per_frame(
            folder / "frame_logger.csv",
            12,
            drawn[seed]["brightness_threshold"],
            height=H,
            width=W,
        ).sum()
        assert sums[folder.name] == pytest.approx(expected, rel=0.05, abs=0.5)  # edge mass
    assert total == pytest.approx(sum(sums.values()), rel=1e-4)


def test_cli_simulate_like_builds_a_set_ready_for_training(tmp_path, capsys):
    calibration = {
        "camera": "emccd",
        "pixel_size_nm": 80.0,
        "psf_sigma_px": 1.8,
        "photons_full_frame": 2500.0,
        "photons_log_spread": 0.3,
        "background_electrons": 20.0,
        "adu_per_electron": 10.0,
        "read_noise_adu": 30.0,
        "offset_adu": 200.0,
        "bit_depth": 16,
        "emitters_per_frame": [1.0, 30.0],
        "conditions": {},
    }
    (tmp_path / "calib.json").write_text(json.dumps(calibration))
    args = ["simulate", "--like", str(tmp_path / "calib.json"), "--stacks", "2", "--frames", "8"]
    args += ["--height", str(H), "--width", str(W), "--set", "layout=uniform"]
    out = ["--out", str(tmp_path / "ft"), "--training-set", str(tmp_path / "ft" / "compact.h5")]
    assert main(["--quiet", *args, *out]) == 0
    assert "ready for defcon train" in capsys.readouterr().out
    for k in (1, 2):
        used = C.read_conditions(tmp_path / "ft" / f"stack-00{k}" / "conditions.json")
        assert used["layout"] == "uniform"  # --set applies to every stack
        assert used == json.loads(json.dumps(like_conditions(calibration, k - 1) | used))
    with h5py.File(tmp_path / "ft" / "compact.h5", "r") as f:
        assert f["input/input"].shape == (16, H, W, 1)


def test_cli_many_stacks_need_drawn_conditions(tmp_path, capsys):
    with pytest.raises(SystemExit, match="need --like, --randomize or --conditions"):
        main(["simulate", "--stacks", "2", "--frames", "4", "--out", str(tmp_path)])


def test_simulated_training_set_never_replaces_another_file(tmp_path):
    victim = tmp_path / "notes.h5"
    victim.write_bytes(b"not a compact set")
    with pytest.raises(OverwriteError, match="notes.h5"):
        simulate_training_set(C.sample_conditions, tmp_path / "sim", victim, 1, 4, H, W)
    assert victim.read_bytes() == b"not a compact set"
    assert not (tmp_path / "sim").exists()


def test_like_conditions_reach_past_the_measured_density():
    # Crowded spots merge when counted: the sweep goes to at least twice what was seen.
    calibration = {
        "camera": "ccd",
        "pixel_size_nm": 50.0,
        "psf_sigma_px": 2.8,
        "photons_full_frame": 4000.0,
        "photons_log_spread": 0.8,
        "background_electrons": 30.0,
        "adu_per_electron": 0.5,
        "read_noise_adu": 4.0,
        "offset_adu": 100.0,
        "bit_depth": 16,
        "emitters_per_frame": [2.0, 40.0],
    }
    per_frame = (64 * 0.05) ** 2  # um^2 of a 64 x 64 frame at 50 nm
    for seed in range(10):
        drawn = like_conditions(calibration, seed)
        assert 80.0 <= drawn["density_sweep"][1] * per_frame <= 360.0 + 1e-9
        assert drawn["psf_sigma_px"] == pytest.approx(2.8, rel=0.25)
        assert drawn["photon_spread"] == 0.6  # the measured spread, at most the training range's


def test_with_overrides_keeps_the_threshold_with_the_brightness():
    drawn = C.sample_conditions(1)
    assert (
        C.with_overrides(drawn, {"layout": "uniform"})["brightness_threshold"]
        == (drawn["brightness_threshold"])
    )
    assert C.with_overrides(drawn, {"photon_rate": 800.0})["brightness_threshold"] == 80.0
    both = C.with_overrides(drawn, {"photon_rate": 800.0, "brightness_threshold": 5.0})
    assert both["brightness_threshold"] == 5.0


def test_shipped_model_names_stand_for_their_files(tmp_path, monkeypatch):
    assert shipped_model_file("pretrained") == shipped_model_file(PRETRAINED_MODELS[0])
    assert all(shipped_model_file(name).is_file() for name in PRETRAINED_MODELS)
    assert shipped_model_file("my_model.keras") is None
    monkeypatch.chdir(tmp_path)
    assert model_file("pretrained") == shipped_model_file("pretrained")
    (tmp_path / "pretrained").write_text("a user's own file of that name wins")
    assert model_file("pretrained") == Path("pretrained")


def test_finetune_config_starts_from_the_pretrained_model(tmp_path):
    shutil.copy(PROJECT / "configs" / "finetune.ini", tmp_path / "finetune.ini")
    with h5py.File(tmp_path / "compact.h5", "w") as f:
        for group in ("input", "target", "seg_map"):
            f.create_dataset(f"{group}/{group}", data=np.zeros((4, 8, 8, 1), np.float32))
    config = read_config(tmp_path / "finetune.ini")
    assert config.initialmodel == shipped_model_file("pretrained")
    assert config.dropoutrate == 0 and config.seg.numepochs == 0
    assert not config.density.freezesegmentation
    # A file named like a shipped model beside the config is the user's, and wins.
    (tmp_path / "pretrained").write_text("x")
    assert read_config(tmp_path / "finetune.ini").initialmodel == tmp_path / "pretrained"
    parser = configparser.ConfigParser()
    parser.read(PROJECT / "configs" / "finetune.ini")
    assert parser["General"]["InitialModel"] == "pretrained"


def test_python_dash_m_defcon_exits_with_the_error_status(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "defcon", "simulate", "--like", str(tmp_path / "none.json")]
        + ["--out", str(tmp_path / "sim")],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "none.json" in done.stderr
