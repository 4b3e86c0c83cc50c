"""No command writes onto its own inputs, or over a file that defcon did not write."""

import pytest

from defcon.cli import main
from defcon.datasets import TrainingSet, compact_set
from defcon.errors import OverwriteError


@pytest.fixture
def model_file(tmp_path):
    from defcon.networks import FCN

    path = tmp_path / "model.keras"
    FCN(output="density", seed=0).save(path)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_predict_never_replaces_its_stack_or_model(tmp_path, sim_files, model_file, capsys):
    stack, _ = sim_files
    before = stack.read_bytes()
    for option in ("--out", "--counts"):
        code, err = run(capsys, "predict", model_file, stack, option, stack)
        assert code == 1 and "also an input" in err and str(stack) in err
    code, err = run(capsys, "predict", model_file, stack, "--counts", model_file)
    assert code == 1 and "also an input" in err
    assert stack.read_bytes() == before


def test_predict_replaces_its_own_outputs_but_not_other_files(tmp_path, sim_files, model_file,
                                                               capsys):
    stack, _ = sim_files
    counts, notes = tmp_path / "counts.csv", tmp_path / "notes.csv"
    assert run(capsys, "predict", model_file, stack, "--counts", counts)[0] == 0
    assert run(capsys, "predict", model_file, stack, "--counts", counts)[0] == 0  # a re-run
    notes.write_text("my lab notes\n")
    code, err = run(capsys, "predict", model_file, stack, "--counts", notes)
    assert code == 1 and "--overwrite" in err and notes.read_text() == "my lab notes\n"
    assert run(capsys, "predict", model_file, stack, "--counts", notes, "--overwrite")[0] == 0
    assert notes.read_text().startswith("frame,count")


def test_compact_never_replaces_its_training_set(tmp_path, sim_files, capsys):
    ts_path = tmp_path / "ts.h5"
    with TrainingSet(ts_path) as ts:
        ts.add_dataset("a", *sim_files)
    before = ts_path.read_bytes()
    code, err = run(capsys, "compact", ts_path, ts_path)
    assert code == 1 and "also an input" in err
    with pytest.raises(OverwriteError):
        compact_set(ts_path, ts_path)
    assert ts_path.read_bytes() == before
    other = tmp_path / "other.h5"
    other.write_bytes(b"not a compact set")
    code, err = run(capsys, "compact", ts_path, other)
    assert code == 1 and "not a compact set written by defcon" in err
    assert run(capsys, "compact", ts_path, tmp_path / "c.h5")[0] == 0
    assert run(capsys, "compact", ts_path, tmp_path / "c.h5", "--shuffle")[0] == 0


def test_export_never_replaces_its_model(tmp_path, model_file, capsys):
    before = model_file.read_bytes()
    code, err = run(capsys, "export", model_file, "--onnx", model_file)
    assert code == 1 and "also an input" in err
    assert model_file.read_bytes() == before
