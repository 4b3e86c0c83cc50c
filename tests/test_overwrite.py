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


def test_predict_replaces_its_own_outputs_but_not_other_files(
    tmp_path, sim_files, model_file, capsys
):
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


# ------------------------------------------------------------- bad days: one-line errors
def test_locked_and_truncated_training_sets_are_one_line_errors(tmp_path, sim_files):
    import subprocess
    import sys

    from defcon.errors import TrainingSetError

    path = tmp_path / "ts.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("a", *sim_files)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import h5py, sys, time; f = h5py.File(sys.argv[1], 'a'); "
            "print('open', flush=True); time.sleep(30)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(TrainingSetError, match="another process has this file open"):
            TrainingSet(path, "a")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(TrainingSetError, match=r"cut.h5: .*(truncated|damaged|cannot open)"):
        TrainingSet(cut, "r")


def test_frames_not_multiples_of_4_are_refused_at_build(tmp_path, sim_files):
    import tifffile

    from defcon.errors import ShapeMismatchError

    stack, truth = sim_files
    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, tifffile.imread(stack)[:, :23, :39])
    with TrainingSet(tmp_path / "ts.h5") as ts:
        with pytest.raises(ShapeMismatchError, match=r"odd.tif: frames of 23 x 39.*20 x 36"):
            ts.add_dataset("odd", odd, truth)


@pytest.mark.parametrize(
    "content, encoding",
    [
        ("OutputDir = out%/\n", "utf-8"),  # '%' is a character, not interpolation
        ("OutputDir = out/  # r\xe9sultats\n", "latin-1"),  # a Latin-1 comment
    ],
)
def test_ini_percent_and_latin1_are_read(compact_file, write_config, content, encoding):
    from defcon.train import read_config

    config = write_config(compact_file)
    text = config.read_text().replace("OutputDir = out/\n", content)
    config.write_bytes(text.encode(encoding))
    assert read_config(config).outputdir.name.startswith("out")


def test_temporaries_of_killed_processes_are_removed_by_the_next_write(tmp_path, sim_files):
    import signal
    import subprocess
    import sys

    stack, truth = sim_files
    out = tmp_path / "c.csv"
    # A process that dies (SIGKILL) while its temporary output exists.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from defcon.files import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('half'); print(tmp, flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    left = tmp_path / child.stdout.readline().strip()
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert left.exists() and ".c.defcon-" in left.name and not out.exists()
    from defcon.files import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text("done")
    assert out.read_text() == "done" and not left.exists()


def test_empty_ground_truth_needs_allow_empty(tmp_path, sim_files):
    from defcon.errors import GroundTruthError

    stack, truth = sim_files
    with TrainingSet(tmp_path / "ts.h5") as ts:
        with pytest.raises(GroundTruthError, match="no emitter is brighter than the threshold 1e"):
            ts.add_dataset("a", stack, truth, brightness_threshold=1e9)
        ts.add_dataset("a", stack, truth, brightness_threshold=1e9, allow_empty=True)
        assert ts["target"]["a"][:].sum() == 0
