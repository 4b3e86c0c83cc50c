import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import ORIGINAL_CONFIG

import defcon
from defcon.errors import ConfigError, MissingFileError, OverwriteError, TrainingError
from defcon.networks import FCN
from defcon.streaming import CompactSetBatches
from defcon.train import read_config, train


def test_original_defcon_config_runs_unchanged(tmp_path, compact_file):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "compact.h5").write_bytes(compact_file.read_bytes())
    (tmp_path / "training").mkdir()
    config = tmp_path / "training" / "config.ini"
    config.write_text(ORIGINAL_CONFIG.format(training_set="./../data/compact.h5"))
    result = train(config, verbose=0)
    assert result["model"] == tmp_path / "training" / "trained_models" / "my_trained_model.keras"
    assert FCN.from_file(result["model"]).output_kind == "density"
    assert (tmp_path / "training" / "weights" / "my_trained_model.seg.weights.h5").exists()


def test_two_stage_training_writes_everything_and_freezes_segmentation(tiny_training):
    config, result = tiny_training
    out = config.parent / "out"
    assert result["model"] == out / "tiny.keras" and result["curves"] == out / "curves.png"
    assert (out / "tiny.ini").read_text() == config.read_text()
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    lines = (out / "history.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["epoch", "stage", "loss", "val_loss", "val_count_mae"]
    stages = [line.split("\t")[1] for line in lines[1:]]
    assert stages == ["seg", "density", "density"]
    assert float(lines[-1].split("\t")[4]) >= 0 and np.isfinite(result["best_val_count_mae"])
    # Stage 2 must not move the segmentation weights saved by stage 1.
    seg = FCN.from_file(result["seg_weights"])
    model = FCN.from_file(result["model"])
    for name in ("conv_seg_1", "conv_seg_3", "decon_seg_2", "seg"):
        for a, b in zip(seg.get_layer(name).get_weights(), model.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert not np.allclose(
        model.get_layer("conv_1").get_weights()[0], FCN(seed=1).get_layer("conv_1").get_weights()[0]
    )


def test_initial_model_fine_tunes_from_existing_weights(
    tmp_path, compact_file, write_config, original_model_file
):
    config = write_config(
        compact_file, extra=f"InitialModel = {original_model_file}\nCountCalibration = false"
    )
    text = config.read_text().replace("NumEpochs = 1", "NumEpochs = 0")  # [SegNet]
    config.write_text(text.replace("AdamLR = 0.001", "AdamLR = 1e-12"))
    result = train(config, verbose=0)
    # Without segmentation epochs and at a negligible rate, the model is the initial one.
    original = FCN.from_file(original_model_file)
    tuned = FCN.from_file(result["model"])
    for layer in original.layers:
        for a, b in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_no_density_epoch_is_a_config_error(compact_file, write_config):
    config = write_config(compact_file)
    config.write_text(config.read_text().replace("NumEpochs = 2", "NumEpochs = 0"))
    with pytest.raises(ConfigError, match=r"\[DensityNet\] NumEpochs: must be at least 1"):
        read_config(config)


def test_diverged_training_fails_and_keeps_the_previous_model(
    tmp_path, compact_file, write_config, tiny_training
):
    config = write_config(compact_file)
    first = tmp_path / "out" / "tiny.keras"  # a finished model where this config writes its own
    first.parent.mkdir()
    first.write_bytes(tiny_training[1]["model"].read_bytes())
    before = first.read_bytes()
    config.write_text(config.read_text().replace("AdamLR = 0.001", "AdamLR = 1e30"))
    with pytest.raises(OverwriteError, match="already there"):
        train(config, verbose=0)
    with pytest.raises(TrainingError, match="diverged"):
        train(config, verbose=0, overwrite=True)
    assert first.read_bytes() == before


def test_calibration_without_emitters_fails(tmp_path, compact_file, write_config):
    empty = tmp_path / "empty.h5"
    empty.write_bytes(compact_file.read_bytes())
    with h5py.File(empty, "a") as f:
        f["target/target"][...] = 0
        f["seg_map/seg_map"][...] = 0
    config = write_config(empty)
    with pytest.raises(TrainingError, match="count calibration impossible"):
        train(config, verbose=0)
    assert not (tmp_path / "out" / "tiny.keras").exists()


def test_training_is_deterministic_for_a_seed(tmp_path, compact_file, write_config, tiny_training):
    config, _ = tiny_training
    again = write_config(compact_file)
    assert again.read_text() == config.read_text()
    train(again, verbose=0)
    history = (tmp_path / "out" / "history.tsv").read_text()
    assert history == (config.parent / "out" / "history.tsv").read_text()


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            ("BatchSize = 16", "BatchSize = sixteen", 1),
            r"\[SegNet\] BatchSize: 'sixteen' is not a whole number",
        ),
        (("AdamLR = 0.001", "AdamLR = -1", 1), r"\[SegNet\] AdamLR: '-1' must be a number > 0"),
        (
            ("ValidationSplit = 0.25", "ValidationSplit = 1.5", 2),
            r"\[DensityNet\] ValidationSplit: '1.5' must be a fraction",
        ),
        (
            ("LambdaFactor = 0.01", "LambdaFactr = 0.01", 1),
            r"\[DensityNet\] lambdafactr: unknown key",
        ),
        (("ModelName = tiny.h5", "ModelName =", 1), r"\[General\] ModelName: missing \(required\)"),
        (("[SegNet]", "[SegmentationNet]", 1), r"missing section \[SegNet\]"),
        (
            ("Seed = 1", "Seed = 1\nAugment = maybe", 1),
            r"\[General\] Augment: 'maybe' is not true or false",
        ),
        (
            ("Seed = 1", "Seed = 1\nDropoutRate = 1.5", 1),
            r"\[General\] DropoutRate: '1.5' must be a fraction >= 0",
        ),
        (
            ("Seed = 1", "Seed = 1\nInitialModel = nowhere.keras", 1),
            r"InitialModel: .*nowhere\.keras does not exist",
        ),
    ],
)
def test_config_errors_name_section_and_key(compact_file, write_config, edit, message):
    config = write_config(compact_file)
    old, new, count = edit
    config.write_text(config.read_text().replace(old, new, count))
    with pytest.raises(ConfigError, match=message) as err:
        read_config(config)
    assert str(config) in str(err.value)


def test_config_reports_every_problem_at_once(compact_file, write_config):
    config = write_config(compact_file)
    config.write_text(
        config.read_text()
        .replace("BatchSize = 16", "BatchSize = 0")
        .replace("Seed = 1", "Seed = x")
    )
    with pytest.raises(ConfigError) as err:
        read_config(config)
    text = str(err.value)
    assert "[SegNet] BatchSize" in text and "[DensityNet] BatchSize" in text and "Seed" in text


def test_training_set_path_must_be_a_compact_set(tmp_path, write_config, sim_files):
    config = write_config(tmp_path / "missing.h5")
    with pytest.raises(ConfigError, match=r"TrainingSetPath: .*missing\.h5 does not exist"):
        read_config(config)
    from defcon.datasets import TrainingSet

    with TrainingSet(tmp_path / "uncompacted.h5") as ts:
        ts.add_dataset("a", *sim_files)
    config = write_config(tmp_path / "uncompacted.h5")
    with pytest.raises(ConfigError, match=r"not a compact set \(missing input/input"):
        read_config(config)
    with pytest.raises(MissingFileError):
        read_config(tmp_path / "absent.ini")


def test_nothing_is_trained_or_written_when_the_config_is_wrong(
    tmp_path, compact_file, write_config
):
    config = write_config(compact_file)
    config.write_text(config.read_text().replace("AdamLR = 0.001", "AdamLR = fast"))
    with pytest.raises(ConfigError):
        train(config)
    assert not (tmp_path / "out").exists() and not (tmp_path / "weights").exists()


def test_batches_stream_in_bounded_blocks_and_cover_every_frame_once(compact_file):
    class CountingDataset:
        """Wraps an h5py dataset, recording the largest read."""

        def __init__(self, data):
            self.data, self.largest = data, 0

        def __getitem__(self, key):
            out = self.data[key]
            self.largest = max(self.largest, len(out))
            return out

    with h5py.File(compact_file, "r") as f:
        batches = CompactSetBatches(f, "density", (0, 90), batch_size=8, block_batches=2, seed=0)
        batches.inputs = CountingDataset(batches.inputs)
        seen = []
        for _epoch in range(2):
            xs = [batches[i][0] for i in range(len(batches))]
            seen.append(np.concatenate(xs))
            batches.on_epoch_end()
        assert len(batches) == 12 and batches.inputs.largest <= 16
        everything = f["input/input"][:90]
    for frames in seen:
        assert len(frames) == 90
        assert sorted(map(bytes, frames)) == sorted(map(bytes, everything))
    assert not np.array_equal(seen[0], seen[1])


def test_python_dash_m_and_callable_module(tmp_path, compact_file, write_config):
    config = write_config(compact_file)
    config.write_text(config.read_text().replace("BatchSize = 16", "BatchSize = sixteen"))
    run = subprocess.run(
        [sys.executable, "-m", "defcon.train", str(config)], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "BatchSize: 'sixteen' is not a whole number" in run.stderr
    assert "Traceback" not in run.stderr
    with pytest.raises(ConfigError):
        defcon.train(config)


def test_count_calibration_matches_validation_counts(compact_file, write_config, tiny_training):
    _, result = tiny_training
    model = FCN.from_file(result["model"])
    with h5py.File(compact_file, "r") as f:
        n = f["input/input"].shape[0]
        start = n - round(n * 0.25)
        x, y = f["input/input"][start:], f["target/target"][start:]
    predicted = model.predict(x, verbose=0).sum(dtype=np.float64)
    assert result["count_scale"] != 1.0
    assert predicted == pytest.approx(y.sum(dtype=np.float64), rel=1e-4)
    off = write_config(compact_file, extra="CountCalibration = false")
    assert train(off, verbose=0)["count_scale"] == 1.0


def test_initial_weights_that_do_not_fit_are_refused_not_ignored():
    import keras

    from defcon.errors import ConfigError, ModelFileError
    from defcon.networks import copy_weights_by_name
    from defcon.train import _start_from

    inputs = keras.Input((None, None, 1))
    other = keras.Model(inputs, keras.layers.Conv2D(3, 3, name="elsewhere")(inputs))
    target = FCN(output="seg", seed=0)
    assert copy_weights_by_name(other, target) == []
    with pytest.raises(ConfigError, match="old.keras shares no layer.*from scratch"):
        _start_from(other, target, "old.keras")
    wrong = keras.Model(inputs, keras.layers.Conv2D(5, 2, name="conv_seg_1")(inputs))
    with pytest.raises(ModelFileError, match="layer .conv_seg_1. has weights of shapes"):
        copy_weights_by_name(wrong, target)
    assert copy_weights_by_name(FCN(output="density", seed=1), target) == [
        layer.name for layer in target.layers if layer.weights
    ]
