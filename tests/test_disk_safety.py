"""Full disks and hard kills never damage what the user had.

The full-disk tests mount a small tmpfs, which needs root and ``mount``; they
skip saying so elsewhere.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import tifffile

from defcon import datasets, files
from defcon.datasets import TrainingSet, compact_set
from defcon.errors import DiskFullError
from defcon.files import reserve_space
from defcon.predict import DensityWriter
from defcon.tiffio import to_float


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder, leave_bytes=0):
    """Fill the disk holding ``folder`` up to ``leave_bytes`` free; return the filler."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def stack_of(folder, sim_files, repeats):
    """``sim_files``' stack repeated ``repeats`` times, with its frame logger, in ``folder``."""
    stack, truth = sim_files
    frames = np.concatenate([tifffile.imread(stack)] * repeats)
    tifffile.imwrite(folder / "big.tif", frames)
    return folder / "big.tif", truth


def test_build_on_a_full_disk_refuses_with_the_numbers_and_keeps_the_set(small_disk, sim_files):
    path = small_disk / "ts.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("first", *sim_files)
        first = ts["target/first"][:]
    big = stack_of(small_disk, sim_files, 4)
    filler = fill(small_disk, leave_bytes=64 << 10)
    # In a child process: a crash there (HDF5 on a full disk) would show as a signal.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "defcon.cli",
            "build",
            str(path),
            *map(str, big),
            "--name",
            "second",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert str(path) in done.stderr and "needs about" in done.stderr and "MiB free" in done.stderr
    filler.unlink()
    with TrainingSet(path) as ts:
        np.testing.assert_array_equal(ts["target/first"][:], first)
        ts.add_dataset("second", *big)
        assert ts.names() == ["first", "second"]


def test_a_disk_filled_by_another_program_during_a_write_does_not_break_it(
    small_disk, sim_files, monkeypatch
):
    path = small_disk / "ts.h5"
    big = stack_of(small_disk, sim_files, 3)

    def reserve_then_fill(*args, **kwargs):
        reserve_space(*args, **kwargs)
        fill(small_disk)

    monkeypatch.setattr(files, "reserve_space", reserve_then_fill)
    with TrainingSet(path) as ts:
        ts.add_dataset("during", *big)
    assert shutil.disk_usage(small_disk).free < 1 << 20
    with TrainingSet(path, "r") as ts:
        np.testing.assert_array_equal(ts["input/during"][..., 0], to_float(tifffile.imread(big[0])))


def test_compact_and_density_outputs_on_a_full_disk(small_disk, sim_files):
    path = small_disk / "ts.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("first", *sim_files)
    fill(small_disk, leave_bytes=16 << 10)
    with pytest.raises(DiskFullError, match=r"compact\.h5.*needs about .* MiB free"):
        compact_set(path, small_disk / "compact.h5")
    for name in ("density.h5", "density.tif"):
        with pytest.raises(DiskFullError, match=name):
            with DensityWriter(small_disk / name, (30, 24, 40, 1)) as writer:
                writer.write(np.zeros((30, 24, 40, 1), np.float32))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "ts.h5"]


def test_a_tiff_that_meets_a_full_disk_midway_is_removed(small_disk):
    out = small_disk / "density.tif"
    with pytest.raises(DiskFullError, match=r"density\.tif: the disk is full"):
        with DensityWriter(out, (30, 24, 40, 1)) as writer:
            fill(small_disk)  # after the free-space check: another program took the room
            writer.write(np.ones((30, 24, 40, 1), np.float32))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


CHILD = textwrap.dedent("""
    import sys, time
    from defcon import datasets, groundtruth
    datasets.CHUNK_BYTES = 4 * 24 * 40 * 2  # two frames per chunk: many writes
    real, calls = groundtruth.segmentation_stack, []

    def stall_at_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(sys.argv[1]):
            print("writing", flush=True)
            time.sleep(120)  # killed here, mid-write
        return real(*args, **kwargs)

    groundtruth.segmentation_stack = stall_at_chunk
    with datasets.TrainingSet(sys.argv[2]) as ts:
        ts.add_dataset("killed", sys.argv[3], sys.argv[4])
""")


@pytest.mark.parametrize("chunk", [1, 8, 15])
def test_a_build_killed_mid_write_leaves_earlier_datasets_and_the_next_build_works(
    tmp_path, sim_files, chunk
):
    path = tmp_path / "ts.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("first", *sim_files)
        first = ts["input/first"][:]
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(chunk), str(path), *map(str, sim_files)],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        try:
            assert child.stdout.readline().strip() == "writing"
        finally:
            child.send_signal(signal.SIGKILL)
    with TrainingSet(path) as ts:
        assert ts.names() == ["first"]
        np.testing.assert_array_equal(ts["input/first"][:], first)
        ts.add_dataset("again", *sim_files)
    with h5py.File(path, "r") as f:
        assert sorted(f["target"]) == ["again", "first"]


def test_clean_removes_leftovers_of_dead_processes_only(tmp_path, sim_files, capsys):
    from defcon.cli import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "sub").mkdir()
    leftovers = [
        tmp_path / f".counts.defcon-{dead.pid}-x1.tmp.csv",
        tmp_path / "sub" / f".density.defcon-{dead.pid}-x2.tmp.h5",
    ]
    running = tmp_path / f".model.defcon-{os.getpid()}-x3.tmp.keras"
    for path in leftovers + [running]:
        path.write_bytes(b"half")
    with TrainingSet(tmp_path / "ts.h5") as ts:
        ts.add_dataset("ok", *sim_files)
        ts["input"].create_dataset(datasets.PARTIAL + "dead", data=np.zeros((1, 4, 4, 1)))

    assert main(["clean", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(leftovers[0]) in out and f"input/{datasets.PARTIAL}dead" in out
    assert not leftovers[0].exists() and leftovers[1].exists() and running.exists()
    with h5py.File(tmp_path / "ts.h5", "r") as f:
        assert list(f["input"]) == ["ok"]
    assert main(["clean", "-r", str(tmp_path)]) == 0
    assert not leftovers[1].exists() and running.exists()
    assert main(["clean", str(tmp_path / "absent")]) == 1
    assert "absent: folder not found" in capsys.readouterr().err
