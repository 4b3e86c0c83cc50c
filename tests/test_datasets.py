import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import make_ground_truth, render_stack

from defcon import datasets
from defcon.datasets import TrainingSet, compact_set
from defcon.errors import (
    DefconError,
    DuplicateNameError,
    GroundTruthError,
    MissingFileError,
    ShapeMismatchError,
    TrainingSetError,
    UnsupportedFileError,
)
from defcon.groundtruth import density_stack
from defcon.tiffio import tiff_to_array


@pytest.fixture
def small_chunks(monkeypatch):
    """Stream 4 frames at a time (24 x 40 frames), so every path sees many chunks."""
    monkeypatch.setattr(datasets, "CHUNK_BYTES", 4 * 4 * 24 * 40)


def test_new_file_gets_the_three_groups(tmp_path):
    with TrainingSet(tmp_path / "t.h5") as ts:
        assert set(ts) == {"input", "target", "seg_map"}
        assert ts.frame_counts() == {"input": {}, "target": {}, "seg_map": {}}
    with TrainingSet(tmp_path / "t.h5", "r") as ts:
        assert "TrainingSet" in repr(ts)


def test_add_dataset_writes_scaled_input_density_and_segmentation(
    tmp_path, sim_files, small_chunks
):
    stack_file, csv_file = sim_files
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("sim", stack_file, csv_file, sigma=1.0, brightness_threshold=250)
        raw = tifffile.imread(stack_file)
        np.testing.assert_array_equal(ts["input/sim"][..., 0], raw / np.float32(65535))
        truth = pd.read_csv(csv_file)
        expected = density_stack(truth, *raw.shape, sigma=1.0, brightness_threshold=250)
        np.testing.assert_allclose(ts["target/sim"][..., 0], expected, atol=1e-7)
        np.testing.assert_array_equal(ts["seg_map/sim"][..., 0], expected > 0.03)
        assert ts["input/sim"].shape == (30, 24, 40, 1)
        assert ts["input/sim"].chunks == (1, 24, 40, 1)
        assert ts["seg_map/sim"].dtype == np.uint8
        # The frame sums are the emitter counts: every emitter is 4 px inside.
        np.testing.assert_allclose(
            ts["target/sim"][()].sum(axis=(1, 2, 3)),
            truth[truth.brightness > 250]
            .groupby("frame")
            .size()
            .reindex(range(1, 31), fill_value=0),
            atol=1e-3,
        )
        attrs = ts["target/sim"].attrs
        assert attrs["source_file"].endswith("stack.tif")
        assert len(attrs["source_sha256"]) == 64
        assert attrs["sigma"] == 1.0 and attrs["kernel"] == "integrated"
        assert "frame_logger.csv" in attrs["ground_truth"] and "defcon_version" in attrs
        assert ts.frame_counts()["target"] == {"sim": 30}


def test_summary_prints_the_tree(tmp_path, sim_files, capsys):
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("sim", *sim_files)
        ts.summary()
    assert capsys.readouterr().out.splitlines() == [
        "input/",
        "    sim: shape = (30, 24, 40, 1), dtype = float32",
        "target/",
        "    sim: shape = (30, 24, 40, 1), dtype = float32",
        "seg_map/",
        "    sim: shape = (30, 24, 40, 1), dtype = uint8",
    ]


def _snapshot(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(
            lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None
        )
        return out


@pytest.mark.parametrize("failure", ["bad_csv", "interrupt", "missing_tiff"])
def test_add_dataset_is_all_or_nothing(tmp_path, sim_files, small_chunks, monkeypatch, failure):
    stack_file, csv_file = sim_files
    path = tmp_path / "t.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("first", stack_file, csv_file)
    before = _snapshot(path)
    ground_truth = csv_file
    if failure == "bad_csv":
        ground_truth = pd.read_csv(csv_file).assign(frame=lambda t: t.frame + 25)
        expected = GroundTruthError
    elif failure == "interrupt":
        calls = []

        def interrupted(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return density_stack(*args, **kwargs)

        monkeypatch.setattr(datasets.groundtruth, "density_stack", interrupted)
        expected = KeyboardInterrupt
    else:
        stack_file = tmp_path / "nope.tif"
        expected = MissingFileError
    with TrainingSet(path) as ts:
        with pytest.raises(expected):
            ts.add_dataset("second", stack_file, ground_truth)
        assert all(list(ts[g]) == ["first"] for g in datasets.GROUPS)
    assert _snapshot(path).keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(_snapshot(path)[key], value)


def test_partial_datasets_left_by_a_killed_process_are_removed(tmp_path, sim_files):
    path = tmp_path / "t.h5"
    with TrainingSet(path) as ts:
        ts.add_dataset("ok", *sim_files)
        ts["input"].create_dataset(datasets.PARTIAL + "dead", data=np.zeros((1, 2, 2, 1)))
        assert ts.names("input") == ["ok"]
    with TrainingSet(path) as ts:
        assert list(ts["input"]) == ["ok"]


def test_duplicate_name_is_refused(tmp_path, sim_files):
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("sim", *sim_files)
        with pytest.raises(DuplicateNameError, match=r"t\.h5.*'sim' already exists"):
            ts.add_dataset("sim", *sim_files)


def test_hdf5_file_that_is_not_a_training_set(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros(3)
    with pytest.raises(TrainingSetError, match=r"other\.h5: not a defcon TrainingSet.*images"):
        TrainingSet(tmp_path / "other.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(UnsupportedFileError, match=r"text\.h5: not an HDF5 file"):
        TrainingSet(tmp_path / "text.h5")
    with pytest.raises(MissingFileError, match="absent.h5"):
        TrainingSet(tmp_path / "absent.h5", "r")


def test_add_input_from_tiff_and_hdf5_and_add_target(tmp_path, sim_files):
    stack_file, _ = sim_files
    density = np.random.default_rng(0).random((30, 24, 40)).astype(np.float32) * 0.06
    with h5py.File(tmp_path / "maps.h5", "w") as f:
        f["maps/density"] = density
        f["raw"] = tifffile.imread(stack_file)
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_input(stack_file)
        ts.add_input(tmp_path / "maps.h5", name="from_h5", input_dataset="raw")
        ts.add_target(tmp_path / "maps.h5", "maps/density", name="stack")
        np.testing.assert_array_equal(ts["input/stack"][()], tiff_to_array(stack_file))
        np.testing.assert_array_equal(ts["input/from_h5"][()], ts["input/stack"][()])
        np.testing.assert_array_equal(ts["target/stack"][..., 0], density)
        np.testing.assert_array_equal(ts["seg_map/stack"][..., 0], density > 0.03)
        assert ts["target/stack"].attrs["source_dataset"] == "maps/density"
        with pytest.raises(TrainingSetError, match=r"maps\.h5: no dataset 'nope'.*maps/density"):
            ts.add_target(tmp_path / "maps.h5", "nope", name="x")
        (tmp_path / "notes.txt").write_text("x")
        with pytest.raises(UnsupportedFileError, match=r"notes\.txt: unsupported file type"):
            ts.add_input(tmp_path / "notes.txt")


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((4, 6, 8, 3), np.uint8), "RGB"),
        (np.zeros((2, 3, 6, 8), np.uint16), "4-D"),
    ],
)
def test_bad_tiffs_are_refused_with_the_file_name(tmp_path, data, message):
    path = tmp_path / "bad.tif"
    if message == "RGB":
        tifffile.imwrite(path, data, photometric="rgb")
    else:
        tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    with TrainingSet(tmp_path / "t.h5") as ts:
        with pytest.raises(UnsupportedFileError, match=rf"bad\.tif: .*{message}"):
            ts.add_input(path)
        assert ts.names("input") == []


def test_empty_tiff_is_refused(tmp_path):
    path = tmp_path / "empty.tif"
    tifffile.imwrite(path, np.zeros((0, 8, 8), np.uint16))
    with pytest.raises(UnsupportedFileError, match=r"empty\.tif: .*empty"):
        tiff_to_array(path)


def test_tiff_to_array_scales_integers_and_keeps_floats(tmp_path):
    data8 = np.arange(2 * 4 * 8, dtype=np.uint8).reshape(2, 4, 8)
    tifffile.imwrite(tmp_path / "a.tif", data8)
    tifffile.imwrite(tmp_path / "f.tif", data8.astype(np.float32) * 7)
    tifffile.imwrite(tmp_path / "one.tif", data8[0].astype(np.uint16))
    np.testing.assert_array_equal(
        tiff_to_array(tmp_path / "a.tif")[..., 0], data8 / np.float32(255)
    )
    np.testing.assert_array_equal(tiff_to_array(tmp_path / "f.tif")[..., 0], data8 * np.float32(7))
    assert tiff_to_array(tmp_path / "one.tif").shape == (1, 4, 8, 1)


# ------------------------------------------------------------------ compact_set
def _frame_key(frame):
    return frame.tobytes()


def test_compact_set_keeps_pairs_aligned_after_shuffle(tmp_path, sim_files, small_chunks):
    stack_file, csv_file = sim_files
    truth = pd.read_csv(csv_file)
    tifffile.imwrite(tmp_path / "b.tif", render_stack(truth, 30, 24, 40, seed=99))
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("a", stack_file, csv_file)
        ts.add_dataset("b", tmp_path / "b.tif", csv_file, sigma=1.5)
        sources = {g: np.concatenate([ts[g]["a"][()], ts[g]["b"][()]]) for g in datasets.GROUPS}
    out = compact_set(tmp_path / "t.h5", tmp_path / "c.h5", shuffle=True, seed=3)
    with h5py.File(out, "r") as f:
        got = {g: f[g][g][()] for g in datasets.GROUPS}
    assert got["input"].shape == (60, 24, 40, 1)
    where = {_frame_key(x): i for i, x in enumerate(sources["input"])}
    order = [where[_frame_key(x)] for x in got["input"]]
    assert sorted(order) == list(range(60)) and order != list(range(60))
    for g in datasets.GROUPS:
        np.testing.assert_array_equal(got[g], sources[g][order])
    again = compact_set(tmp_path / "t.h5", tmp_path / "c2.h5", shuffle=True, seed=3)
    with h5py.File(again, "r") as f:
        np.testing.assert_array_equal(f["target/target"][()], got["target"])


def test_compact_set_without_shuffle_keeps_order(tmp_path, sim_files):
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("a", *sim_files)
        expected = ts["input/a"][()]
        compact_set(ts, tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5", "r") as f:
        np.testing.assert_array_equal(f["input/input"][()], expected)
        assert f["input/input"].chunks == (1, 24, 40, 1)


def test_augment_scales_brightness_within_range_and_clips(tmp_path, sim_files):
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("a", *sim_files)
        original = ts["input/a"][()]
        target = ts["target/a"][()]
    compact_set(tmp_path / "t.h5", tmp_path / "c.h5", augment=True, seed=5)
    with h5py.File(tmp_path / "c.h5", "r") as f:
        augmented, new_target = f["input/input"][()], f["target/target"][()]
    np.testing.assert_array_equal(new_target, target)
    assert augmented.max() <= 1.0 and augmented.min() >= 0.0
    unclipped = augmented < 1.0
    factors = [np.median(a[u] / o[u]) for a, o, u in zip(augmented, original, unclipped)]
    assert 10**-0.5 - 1e-4 <= min(factors) and max(factors) <= 10**1.0 + 1e-3
    assert np.std(np.log10(factors)) > 0.2


def test_compact_set_refuses_mixed_frame_sizes_and_leaves_nothing(tmp_path, sim_files):
    n, h, w = 5, 16, 20
    truth = make_ground_truth(n, h, w, per_frame=2, seed=0)
    tifffile.imwrite(tmp_path / "small.tif", render_stack(truth, n, h, w, seed=0))
    with TrainingSet(tmp_path / "t.h5") as ts:
        ts.add_dataset("a", *sim_files)
        ts.add_dataset("small", tmp_path / "small.tif", truth)
    (tmp_path / "c.h5").write_bytes(b"previous result")
    with pytest.raises(ShapeMismatchError, match=r"t\.h5: frame sizes differ.*'small'"):
        compact_set(tmp_path / "t.h5", tmp_path / "c.h5")
    assert (tmp_path / "c.h5").read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5", "small.tif", "t.h5"]


def test_compact_set_of_an_empty_set(tmp_path):
    TrainingSet(tmp_path / "t.h5").close()
    with pytest.raises(TrainingSetError, match="nothing to compact"):
        compact_set(tmp_path / "t.h5", tmp_path / "c.h5")


def test_errors_are_defcon_errors_and_builtins():
    assert issubclass(GroundTruthError, (DefconError, ValueError))
    assert issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(DuplicateNameError, DefconError)
