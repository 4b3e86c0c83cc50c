"""Counting many stacks with Dask: same CSVs as serial counting, failures, summary, CLI.

The cluster is a real ``LocalCluster`` of 2 worker processes (processes=True,
one thread each), started once for the module; one test starts its own
through :func:`count_stacks` to check that path too.
"""

import csv
import logging
import shutil

import numpy as np
import pytest
import tifffile

pytest.importorskip("distributed", reason='Dask is not installed: pip install "defcon[dask]"')

from distributed import LocalCluster  # noqa: E402

from defcon import distributed as D  # noqa: E402
from defcon.cli import main  # noqa: E402
from defcon.errors import DefconError, MissingFileError, OverwriteError, ParameterError  # noqa: E402
from defcon.predict import count_tiff  # noqa: E402

SHAPE = (12, 40, 56)  # frames, height, width: non-square on purpose


def blobs(seed, n_frames=SHAPE[0], dtype=np.uint16):
    """Frames with Gaussian spots on a noisy background, shape ``(n_frames, 40, 56)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    stack = rng.normal(100, 5, (n_frames,) + SHAPE[1:])
    for k in range(n_frames):
        for y, x in rng.uniform(3, np.array(SHAPE[1:]) - 3, (k % 7 + 1, 2)):
            stack[k] += 700 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
    return stack.clip(0, np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A random-weight density model recording a training envelope (so frames get flags)."""
    from defcon.envelope import Envelope
    from defcon.networks import FCN

    path = tmp_path_factory.mktemp("model") / "m.keras"
    FCN(output="density", seed=0, envelope=Envelope((0.7, 2.5), (0, 360))).save(path)
    return path


@pytest.fixture(scope="module")
def scheduler():
    """Address of a LocalCluster of 2 worker processes, closed after the module."""
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address="127.0.0.1:0",  # any free port: never "already in use"
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


def write_stacks(folder, seeds=(1, 2, 3)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        paths.append(folder / f"stack{seed}.tif")
        tifffile.imwrite(paths[-1], blobs(seed))
    return paths


def read_summary(path):
    with open(path, newline="", encoding="utf-8") as f:
        return {row["path"]: row for row in csv.DictReader(f)}


def test_counts_equal_serial_count_tiff(tmp_path, model_file, scheduler):
    stacks = write_stacks(tmp_path / "dask")
    serial = [shutil.copy(p, tmp_path / p.name) for p in stacks]
    expected = [
        count_tiff(model_file, s, counts=D.counts_path(s), density_output=tmp_path / f"{i}.tif")
        for i, s in enumerate(serial)
    ]
    results = D.count_stacks(
        model_file,
        stacks,
        scheduler=scheduler,
        out_dir=tmp_path / "density",
        summary=tmp_path / "summary.csv",
        device="cpu",
    )
    assert [r.path for r in results] == stacks and all(r.ok for r in results)
    for i, (result, s, want) in enumerate(zip(results, serial, expected)):
        assert D.counts_path(result.path).read_bytes() == D.counts_path(s).read_bytes()
        np.testing.assert_array_equal(result.counts.counts, want.counts)
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "density" / f"{result.path.stem}_density.tif"),
            tifffile.imread(tmp_path / f"{i}.tif"),
        )
    rows = read_summary(tmp_path / "summary.csv")
    assert list(rows) == [str(p) for p in stacks]
    for result, want in zip(results, expected):
        row = rows[str(result.path)]
        assert row["status"] == "ok" and row["error"] == "" and float(row["seconds"]) > 0
        assert int(row["frames"]) == SHAPE[0]
        assert float(row["total_count"]) == pytest.approx(want.counts.sum(), abs=1e-4)
        assert float(row["mean_count"]) == pytest.approx(want.counts.mean(), abs=1e-4)
        assert float(row["max_local_count"]) == pytest.approx(want.max_local_counts.max(), abs=1e-4)
        assert row["flags"] == D.flag_summary(want.flags)


def test_cli_folder_with_broken_stacks(tmp_path, model_file, scheduler, capsys):
    """A text file named .tif and a truncated TIFF fail; the others are counted; exit 1."""
    folder = tmp_path / "data"
    good = write_stacks(folder, seeds=(4, 5))
    (folder / "notes.tif").write_text("not a TIFF")
    truncated = folder / "cut.tiff"
    tifffile.imwrite(truncated, blobs(6))
    truncated.write_bytes(truncated.read_bytes()[:-3000])
    (folder / "sub").mkdir()
    tifffile.imwrite(folder / "sub" / "deeper.tif", blobs(7))  # not taken: no --recursive
    summary = tmp_path / "all.csv"

    argv = ["--quiet", "predict", model_file, folder, "--scheduler", scheduler]
    assert main([str(a) for a in argv + ["--summary", summary]]) == 1
    out, err = capsys.readouterr()
    rows = read_summary(summary)
    paths = [truncated, folder / "notes.tif", *good]
    assert list(rows) == [str(p) for p in sorted(paths)]  # sorted, the subfolder left out
    assert [rows[str(p)]["status"] for p in good] == ["ok", "ok"]
    for bad in (truncated, folder / "notes.tif"):
        row = rows[str(bad)]
        assert row["status"] == "failed" and row["frames"] == "" and str(bad) in row["error"]
        assert f"defcon predict: error: {row['error']}" in err.splitlines()
        assert not D.counts_path(bad).exists()
    assert err.splitlines()[-1] == (
        f"defcon predict: error: 2 of 4 stacks failed (listed above and in {summary})"
    )
    assert "Traceback" not in err
    for p in good:
        assert f"{p}: {SHAPE[0]} frames" in out
        assert D.counts_path(p).read_text().startswith("frame,count,max_local_count,flag\n")


def test_device_reaches_the_workers(tmp_path, model_file, scheduler):
    """On a machine without a GPU, --device gpu fails every stack in its worker, saying why."""
    from defcon.backends import list_devices

    if list_devices("gpu"):
        pytest.skip("this machine has a GPU")
    stacks = write_stacks(tmp_path, seeds=(10,))
    results = D.count_stacks(model_file, stacks, scheduler=scheduler, device="gpu", summary=None)
    assert [r.ok for r in results] == [False] and "sees no GPU" in results[0].error
    assert not D.counts_path(stacks[0]).exists()
    with pytest.raises(ParameterError, match="device must be one of"):
        D.count_stacks(model_file, stacks, scheduler=scheduler, device="tpu")


def test_local_cluster_is_started_and_closed(tmp_path, model_file, monkeypatch):
    stacks = write_stacks(tmp_path, seeds=(8, 9))
    monkeypatch.chdir(tmp_path)
    results = D.count_stacks(model_file, tmp_path, n_workers=2)
    assert [r.path for r in results] == stacks and all(r.ok for r in results)
    assert list(read_summary(tmp_path / D.DEFAULT_SUMMARY)) == [str(p) for p in stacks]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--out", "d.tif"], "with several stacks use --out-dir DIR"),
        (["--counts", "c.csv"], "each stack's counts go to STACK_counts.csv"),
    ],
)
def test_one_file_outputs_are_refused_with_several_stacks(
    tmp_path, model_file, capsys, option, message
):
    stacks = write_stacks(tmp_path, seeds=(1, 2))
    assert main(["predict", str(model_file), *map(str, stacks), *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith("defcon predict: error: ") and message in err
    assert not any(D.counts_path(p).exists() for p in stacks)


def test_outputs_are_checked_before_counting(tmp_path, model_file):
    a, b = write_stacks(tmp_path / "a", seeds=(1,)), write_stacks(tmp_path / "b", seeds=(1,))
    with pytest.raises(OverwriteError, match="both .* would write it"):
        D.count_stacks(model_file, a + b, out_dir=tmp_path / "out", summary=None)
    D.counts_path(a[0]).write_text("my notes\n")
    with pytest.raises(OverwriteError, match="not a counts CSV written by defcon"):
        D.count_stacks(model_file, a, summary=None)
    with pytest.raises(OverwriteError, match="also an input"):
        D.count_stacks(model_file, b, summary=b[0])
    assert not D.counts_path(b[0]).exists()
    with pytest.raises(MissingFileError, match="nothing.keras: model file not found"):
        D.count_stacks(tmp_path / "nothing.keras", b)


def test_stack_paths(tmp_path):
    from test_tiffio import write_micromanager

    from defcon.predict import DensityWriter

    write_stacks(tmp_path, seeds=(2, 1))
    tifffile.imwrite(tmp_path / "upper.TIF", blobs(3))
    (tmp_path / ".hidden.tif").write_text("a temporary")
    (tmp_path / "notes.txt").write_text("not a stack")
    (tmp_path / "sub").mkdir()
    first, _ = write_micromanager(tmp_path / "sub")
    with DensityWriter(tmp_path / "d_density.tif", (1, 4, 4, 1)) as writer:  # skipped
        writer.write(np.zeros((1, 4, 4, 1), np.float32))
    names = ["stack1.tif", "stack2.tif", "upper.TIF"]
    assert D.stack_paths(tmp_path) == [tmp_path / n for n in names]
    assert D.stack_paths(tmp_path, recursive=True) == [tmp_path / n for n in names[:2]] + [
        first,  # its companion _1.ome.tif is read through it
        tmp_path / "upper.TIF",
    ]
    assert D.stack_paths([tmp_path / "stack1.tif", tmp_path]) == [tmp_path / n for n in names]
    with pytest.raises(MissingFileError, match="nothing.tif: TIFF stack or folder not found"):
        D.stack_paths([tmp_path / "stack1.tif", tmp_path / "nothing.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingFileError, match="empty: no .tif or .tiff file"):
        D.stack_paths(tmp_path / "empty")


def test_without_dask_stacks_are_counted_in_this_process(tmp_path, model_file, monkeypatch, caplog):
    stacks = write_stacks(tmp_path, seeds=(1, 2))
    monkeypatch.setattr(D, "_dask_available", lambda: False)
    with pytest.raises(DefconError, match=r'pip install "defcon\[dask\]"'):
        D.count_stacks(model_file, stacks, scheduler="tcp://127.0.0.1:1")
    with caplog.at_level(logging.WARNING, logger="defcon"):
        results = D.count_stacks(model_file, stacks, summary=tmp_path / "s.csv", batch_size=5)
    assert "one after another" in caplog.text
    serial = count_tiff(model_file, stacks[0], batch_size=5)
    np.testing.assert_array_equal(results[0].counts.counts, serial.counts)


def test_flag_summary():
    assert D.flag_summary(["", "psf_wide", "psf_wide+too_dense", "nan_pixels"]) == (
        "psf_wide:2;too_dense:1;nan_pixels:1"
    )
    assert D.flag_summary(["", ""]) == ""
