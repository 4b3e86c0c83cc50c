"""Tests for defcon.groundtruth: frame-logger reading, density and segmentation maps."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import make_ground_truth
from scipy.special import erf
from scipy.stats import multivariate_normal

from defcon import groundtruth
from defcon.errors import (
    DefconError,
    GroundTruthError,
    GroundTruthWarning,
    MissingFileError,
    UnsupportedFileError,
)
from defcon.groundtruth import (
    Emitters,
    count_per_frame,
    density_stack,
    read_emitters,
    read_ground_truth,
    segmentation_stack,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sass-frame-loggers"
HEADER = "frame,id,x,y,z,brightness"


def emitters(frame, x, y, brightness=1000.0):
    """A ground-truth DataFrame from parallel sequences (frames 1-based)."""
    frame, x, y = np.atleast_1d(frame), np.atleast_1d(x), np.atleast_1d(y)
    return pd.DataFrame(
        {
            "frame": frame,
            "id": np.arange(len(frame)),
            "x": np.asarray(x, dtype=float),
            "y": np.asarray(y, dtype=float),
            "z": 0.0,
            "brightness": np.broadcast_to(brightness, frame.shape).astype(float),
        }
    )


def random_emitters(rng, n_frames, height, width, per_frame, margin=0.0):
    n = n_frames * per_frame
    return emitters(
        np.repeat(np.arange(1, n_frames + 1), per_frame),
        rng.uniform(margin, width - margin, n),
        rng.uniform(margin, height - margin, n),
        rng.uniform(300, 3000, n),
    )


def naive_density(gt, n_frames, height, width, sigma, threshold=250):
    """Brute force: one full-frame, pixel-integrated Gaussian per emitter (float64)."""
    out = np.zeros((n_frames, height, width))
    col_edges, row_edges = np.arange(width + 1), np.arange(height + 1)
    for frame, x, y, brightness in gt[["frame", "x", "y", "brightness"]].itertuples(index=False):
        if brightness > threshold:
            wx = 0.5 * np.diff(erf((col_edges - x) / (sigma * np.sqrt(2))))
            wy = 0.5 * np.diff(erf((row_edges - y) / (sigma * np.sqrt(2))))
            out[int(frame) - 1] += np.outer(wy, wx)
    return out


def write_csv(tmp_path, text, name="logger.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- density maps
@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_frame_sum_is_count_for_emitters_well_inside(sigma):
    rng = np.random.default_rng(0)
    gt = random_emitters(rng, n_frames=8, height=32, width=48, per_frame=5, margin=4 * sigma)
    gt = gt.iloc[rng.permutation(len(gt))[: len(gt) - 7]]  # uneven counts, unsorted frames
    density = density_stack(gt, 8, 32, 48, sigma=sigma)
    assert density.shape == (8, 32, 48) and density.dtype == np.float32
    expected = np.bincount(gt["frame"] - 1, minlength=8)
    np.testing.assert_allclose(density.sum(axis=(1, 2), dtype=np.float64), expected, atol=1e-4)


def test_orientation_on_non_square_frames():
    density = density_stack(emitters(1, 30.5, 5.5), 1, 24, 40)
    assert density.shape == (1, 24, 40)
    assert np.unravel_index(density[0].argmax(), (24, 40)) == (5, 30)
    frame = density[0]
    assert frame[5, 29] == pytest.approx(frame[5, 31])
    assert frame[4, 30] == pytest.approx(frame[6, 30])
    assert frame[5, 30] == pytest.approx((0.5 * erf(0.5 / np.sqrt(2)) * 2) ** 2, abs=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 15.0])
def test_matches_naive_full_frame_gaussians_including_edges(sigma):
    rng = np.random.default_rng(1)
    height, width, n_frames = 24, 40, 4
    inside = random_emitters(rng, n_frames, height, width, per_frame=12)
    edges = emitters(  # on edges and in corners, where windows are shifted inwards
        [1, 1, 2, 2, 3, 3, 4, 4],
        [0.0, 39.999, 0.3, 39.6, 20.0, 20.2, 0.01, 39.99],
        [0.0, 23.999, 12.0, 12.5, 0.2, 23.8, 23.99, 0.01],
    )
    gt = pd.concat([inside, edges], ignore_index=True)
    density = density_stack(gt, n_frames, height, width, sigma=sigma)
    expected = naive_density(gt, n_frames, height, width, sigma)
    np.testing.assert_allclose(density, expected, atol=1e-6)


def test_mass_outside_the_frame_is_lost():
    density = density_stack(emitters([1, 2], [0.0, 0.0], [10.0, 0.0]), 2, 20, 20)
    np.testing.assert_allclose(density.sum(axis=(1, 2)), [0.5, 0.25], atol=1e-6)


def test_sampled_kernel_is_the_pdf_at_pixel_centres():
    gt = emitters([1, 1, 2], [3.2, 17.9, 10.0], [5.7, 2.0, 11.4])
    height, width = 16, 24
    density = density_stack(gt, 2, height, width, kernel="sampled")
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1)
    expected = np.zeros((2, height, width))
    for frame, x, y in gt[["frame", "x", "y"]].itertuples(index=False):
        pdf = multivariate_normal.pdf(centres, [x, y], cov=1.0)  # DEFCoN's generate_map
        expected[frame - 1] += pdf.reshape(height, width)
    np.testing.assert_allclose(density, expected, atol=1e-6)


def test_brightness_threshold_is_strict():
    gt = emitters([1, 1, 2, 2], [5, 10, 5, 10], [5, 5, 5, 5], brightness=[100, 250, 250.5, 1000])
    sums = density_stack(gt, 2, 16, 16).sum(axis=(1, 2))
    np.testing.assert_allclose(sums, [0, 2], atol=1e-4)
    np.testing.assert_array_equal(count_per_frame(gt, 3), [0, 2, 0])
    everything = density_stack(gt, 2, 16, 16, brightness_threshold=None)
    np.testing.assert_allclose(everything.sum(axis=(1, 2)), [2, 2], atol=1e-4)
    np.testing.assert_array_equal(count_per_frame(gt, 2, brightness_threshold=None), [2, 2])


def test_frame_range_chunks_concatenate_to_the_whole_stack():
    rng = np.random.default_rng(2)
    gt = random_emitters(rng, n_frames=10, height=20, width=30, per_frame=6)
    whole = density_stack(gt, 10, 20, 30)
    ranges = [(0, 3), (3, 3), (3, 7), (7, 10)]
    chunks = [density_stack(gt, 10, 20, 30, frame_range=r) for r in ranges]
    assert [c.shape[0] for c in chunks] == [3, 0, 4, 3]
    np.testing.assert_array_equal(np.concatenate(chunks), whole)


def test_frames_without_emitters_are_zero_and_counts_have_n_frames():
    gt = emitters([2, 2, 5], [4, 6, 8], [4, 6, 8])
    density = density_stack(gt, 6, 12, 12)
    assert not density[[0, 2, 3, 5]].any()
    counts = count_per_frame(gt, 6)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [0, 2, 0, 0, 1, 0])


def test_segmentation_threshold_is_strict():
    density = np.array([[[0.0, 0.02], [0.03, 0.031]]], dtype=np.float32)
    seg = segmentation_stack(density)
    assert seg.dtype == np.uint8 and seg.shape == density.shape
    np.testing.assert_array_equal(seg, [[[0, 0], [0, 1]]])
    np.testing.assert_array_equal(segmentation_stack(density, threshold=0.01), [[[0, 1], [1, 1]]])


# --------------------------------------------------------------------------- reading
def test_reads_csv_with_dtypes_and_extra_columns(tmp_path):
    path = write_csv(tmp_path, f"{HEADER},extra\n1,7,2.5,3.5,0.1,900,a\n3,8,4,5,0.2,100,b\n\n")
    gt = read_ground_truth(path, n_frames=3, height=8, width=8)
    assert list(gt.columns) == ["frame", "id", "x", "y", "z", "brightness", "extra"]
    assert gt["frame"].dtype == np.int64
    assert all(gt[c].dtype == np.float64 for c in ("x", "y", "brightness"))
    assert gt["frame"].tolist() == [1, 3] and gt["extra"].tolist() == ["a", "b"]


def test_header_only_csv_gives_empty_ground_truth_and_zero_maps(tmp_path):
    path = write_csv(tmp_path, HEADER + "\n")
    assert len(read_ground_truth(path, n_frames=3)) == 0
    assert not density_stack(path, 3, 8, 8).any()
    np.testing.assert_array_equal(count_per_frame(path, 3), [0, 0, 0])


def test_dataframe_input_is_not_modified():
    gt = emitters([1.0, 2.0], [1, 2], [1, 2])
    before = gt.copy()
    assert read_ground_truth(gt)["frame"].dtype == np.int64
    pd.testing.assert_frame_equal(gt, before)


@pytest.mark.parametrize(
    "body, fragments",
    [
        ("frame,id,x,z,brightness\n1,1,2,0,300\n", ["missing column", "'y'"]),
        ("id,x,y\n1,2,3\n", ["'frame'", "'brightness'"]),
        (f"{HEADER}\n1,1,2,3,0,300\n2,1,abc,3,0,300\n", ["'x'", "'abc'", "line 3"]),
        (f"{HEADER}\n1,1,2,3,0,300\n\n2,1,2,,0,300\n", ["'y'", "no value", "line 4"]),
        (f"{HEADER}\n1,1,2,3,0,nan\n", ["'brightness'", "line 2"]),
        (
            f"{HEADER}\n1,1,2,3,0,300\n2.5,1,2,3,0,300\n",
            ["'frame'", "2.5", "whole number", "line 3"],
        ),
        (f"{HEADER}\n0,1,2,3,0,300\n", ["frame 0", "below 1", "line 2"]),
        (
            f"{HEADER}\n1,1,2,3,0,300\n6,1,2,3,0,300\n",
            ["frame 6", "line 3", "beyond the stack of 5 frames"],
        ),
        ("", ["empty"]),
    ],
)
def test_bad_csv_raises_with_file_column_and_line(tmp_path, body, fragments):
    path = write_csv(tmp_path, body, name="bad_logger.csv")
    with pytest.raises(GroundTruthError) as info:
        read_ground_truth(path, n_frames=5)
    message = str(info.value)
    assert "bad_logger.csv" in message
    for fragment in fragments:
        assert fragment in message
    assert isinstance(info.value, ValueError)


def test_bad_dataframe_names_dataframe_column_and_index():
    gt = emitters([1, 2, 3], [1, 2, 3], [1, 2, 3]).set_index(pd.Index([10, 20, 30]))
    gt.loc[20, "x"] = np.inf
    with pytest.raises(GroundTruthError, match=r"DataFrame: column 'x' .*index 20"):
        read_ground_truth(gt)
    with pytest.raises(GroundTruthError, match="DataFrame: missing column.*'brightness'"):
        read_ground_truth(gt.drop(columns="brightness"))


def test_missing_folder_and_unreadable_files(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere.csv") as info:
        read_ground_truth(tmp_path / "nowhere.csv")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(UnsupportedFileError, match="folder"):
        read_ground_truth(tmp_path)
    binary = tmp_path / "stack.tif"
    binary.write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xfe\x00\x01")
    with pytest.raises(DefconError, match="stack.tif"):
        read_ground_truth(binary)
    with pytest.raises(TypeError):
        read_ground_truth(np.zeros((3, 4)))


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"sigma": 0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"kernel": "box"}, "kernel"),
        ({"frame_range": (2, 1)}, "frame_range"),
        ({"frame_range": (0, 5)}, "frame_range"),
        ({"n_frames": 0}, "n_frames"),
        ({"height": 2.5}, "height"),
        ({"brightness_threshold": "bright"}, "brightness_threshold"),
    ],
)
def test_bad_parameters(kwargs, fragment):
    args = {"n_frames": 4, "height": 8, "width": 8, **kwargs}
    with pytest.raises(GroundTruthError, match=fragment):
        density_stack(emitters(1, 2, 2), **args)


def test_emitters_outside_the_frame_are_dropped_with_a_warning(tmp_path):
    rows = [
        "1,1,5,5,0,900",
        "1,2,-0.1,5,0,900",
        "2,3,40,5,0,900",
        "2,4,5,24,0,900",
        "2,5,39.9,23.9,0,900",
        "1,6,20,12,0,100",
        "2,7,20,12,0,100",
    ]
    path = write_csv(tmp_path, HEADER + "\n" + "\n".join(rows) + "\n", name="outside.csv")
    with pytest.warns(GroundTruthWarning, match=r"outside.csv: dropped 3 of 7 emitters") as record:
        gt = read_ground_truth(path, n_frames=2, height=24, width=40)
    assert record[0].filename == __file__  # the warning points at the caller
    assert gt["id"].tolist() == [1, 5, 6, 7]
    with pytest.warns(GroundTruthWarning, match="dropped 3"):
        density = density_stack(path, 2, 24, 40)  # ids 6 and 7 are below the threshold
    corner = (0.5 * (1 + erf(0.1 / np.sqrt(2)))) ** 2  # 0.1 px from two edges
    assert density.sum() == pytest.approx(1.0 + corner, abs=1e-5)
    with pytest.warns(GroundTruthWarning):
        np.testing.assert_array_equal(count_per_frame(path, 2, height=24, width=40), [1, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_ground_truth(path, n_frames=2)  # no frame size: nothing dropped, no warning


@pytest.mark.parametrize(
    "truth_shape, scale, cause", [((24, 80), 100.0, "nanometres"), ((80, 24), 1.0, "swapped")]
)
def test_positions_mostly_outside_the_frame_are_an_error_naming_the_cause(
    tmp_path, truth_shape, scale, cause
):
    # Positions in nm, or written for the transposed frame (x and y swapped).
    truth = make_ground_truth(3, *truth_shape, 6, seed=2)
    truth[["x", "y"]] *= scale
    path = tmp_path / "wrong.csv"
    truth.to_csv(path, index=False)
    with pytest.raises(GroundTruthError, match=f"wrong.csv: .*outside the 80 x 24 frame.*{cause}"):
        read_ground_truth(path, n_frames=3, height=24, width=80)


# --------------------------------------------------------------------------- chunked reading
def sass_lines(frames, rng, width=40, height=24):
    """Frame-logger lines (no header) for the given 1-based frames, SASS-like."""
    n = len(frames)
    x, y = rng.uniform(0, width, n), rng.uniform(0, height, n)
    brightness = rng.uniform(100, 3000, n).round()
    return [
        f"{f},{i},{a:.4f},{b:.4f},0.0000,{c:.4f}"
        for i, (f, a, b, c) in enumerate(zip(frames, x, y, brightness))
    ]


@pytest.fixture
def small_csv_chunks(monkeypatch):
    """Read CSVs 4 rows at a time."""
    monkeypatch.setattr(groundtruth, "_CHUNK_ROWS", 4)


def test_chunked_reading_gives_the_one_shot_result(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    frames = rng.integers(1, 9, 41)  # out of frame order, across chunks
    lines = [line + ",e" for line in sass_lines(frames, rng)]
    lines[5] = "3,99,-1.5,3.0,0.0,900,e"  # one emitter outside the frame
    lines.insert(9, "")  # a blank line
    path = write_csv(tmp_path, f"{HEADER},extra\n" + "\n".join(lines) + "\n")
    # The reference: pandas reads the whole file at once (a blank line makes id float).
    table = pd.read_csv(path, skip_blank_lines=False).dropna(how="all")
    inside = table[(table.x >= 0) & (table.x < 40) & (table.y >= 0) & (table.y < 24)]
    expected = inside.reset_index(drop=True).astype({"frame": np.int64})
    bright = expected[expected.brightness > 250].sort_values("frame", kind="stable")
    dense = density_stack(expected, 8, 24, 40)
    for rows in (3, 7, 1 << 16):
        monkeypatch.setattr(groundtruth, "_CHUNK_ROWS", rows)
        with pytest.warns(GroundTruthWarning, match="dropped 1 of 41 emitters") as record:
            gt = read_ground_truth(path, n_frames=8, height=24, width=40)
        assert len(record) == 1  # one warning for the whole file, not one per chunk
        pd.testing.assert_frame_equal(gt, expected)
        with pytest.warns(GroundTruthWarning):
            emitters = read_emitters(path, 8, 24, 40, brightness_threshold=250)
        assert emitters.starts.tolist() == [
            0,
            *np.cumsum(np.bincount(bright.frame - 1, minlength=8)),
        ]
        np.testing.assert_array_equal(emitters.x, bright.x)
        np.testing.assert_array_equal(emitters.y, bright.y)
        assert emitters.brightest == inside.brightness.max()
        with pytest.warns(GroundTruthWarning):
            np.testing.assert_array_equal(density_stack(path, 8, 24, 40), dense)
        np.testing.assert_array_equal(density_stack(emitters, 8, 24, 40), dense)
        with pytest.warns(GroundTruthWarning):
            counts = count_per_frame(path, 8, height=24, width=40)
        np.testing.assert_array_equal(counts, np.bincount(bright.frame - 1, minlength=8))


@pytest.mark.parametrize(
    "bad, fragments",
    [
        ("5,1,2.0,abc,0,900", ["'y'", "'abc'", "line 19"]),
        ("5,1,2.0,3.0,0,", ["'brightness'", "no value", "line 19"]),
        ("9,1,2.0,3.0,0,900", ["frame 9", "beyond the stack of 8 frames", "line 19"]),
    ],
)
def test_a_bad_value_in_a_late_chunk_names_its_line(tmp_path, small_csv_chunks, bad, fragments):
    lines = sass_lines(np.repeat(np.arange(1, 9), 3), np.random.default_rng(4))
    lines.insert(8, "")  # line 10 is blank: later line numbers still count it
    lines[17] = bad  # line 19, in the fifth chunk of 4 rows
    path = write_csv(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", name="late.csv")
    for read in (
        lambda: read_ground_truth(path, n_frames=8),
        lambda: read_emitters(path, 8, 24, 40, brightness_threshold=250),
        lambda: count_per_frame(path, 8),
    ):
        with pytest.raises(GroundTruthError) as info:
            read()
        for fragment in ["late.csv", *fragments]:
            assert fragment in str(info.value)


@pytest.mark.parametrize("first_out, later_out, error", [(4, 0, False), (0, 6, True)])
def test_positions_outside_the_frame_are_counted_over_all_chunks(
    tmp_path, small_csv_chunks, first_out, later_out, error
):
    # Ten emitters in chunks of 4: the first chunk alone is all outside, yet only 4 of
    # 10 are (a warning); or 6 of 10, spread over the later chunks (an error).
    rng = np.random.default_rng(5)
    lines = sass_lines(np.repeat(np.arange(1, 6), 2), rng)
    nm = [i for i in range(first_out)] + [9 - i for i in range(later_out)]
    for i in nm:
        frame, id_, x, y, z, brightness = lines[i].split(",")
        lines[i] = ",".join(
            [frame, id_, f"{float(x) * 100:.1f}", f"{float(y) * 100:.1f}", z, brightness]
        )
    path = write_csv(tmp_path, HEADER + "\n" + "\n".join(lines) + "\n", name="nm.csv")
    if error:
        with pytest.raises(
            GroundTruthError,
            match="nm.csv: 6 of 10 emitters lie outside the 40 x 24 frame.*nanometres",
        ):
            read_emitters(path, 5, 24, 40)
    else:
        with pytest.warns(GroundTruthWarning, match="nm.csv: dropped 4 of 10 emitters") as rec:
            emitters = read_emitters(path, 5, 24, 40, brightness_threshold=None)
        assert len(rec) == 1 and rec[0].filename == __file__ and len(emitters) == 6


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_out_of_order_frames_are_sorted_stably_whatever_the_line_ends(
    tmp_path, small_csv_chunks, newline
):
    frames = [3, 3, 2, 5, 1, 1, 4, 2, 5, 3, 1]  # chunks in order at first, then not
    frames = [1, 1, 2, 2, 2, 3, 3] + frames
    lines = sass_lines(frames, np.random.default_rng(6))
    path = tmp_path / "shuffled.csv"
    path.write_bytes((newline.join([HEADER, *lines]) + newline).encode())
    emitters = read_emitters(path, 5, 24, 40, brightness_threshold=None)
    order = np.argsort(frames, kind="stable")
    x = np.array([float(line.split(",")[2]) for line in lines])
    np.testing.assert_array_equal(emitters.x, x[order])
    assert emitters.starts.tolist() == [0, *np.cumsum(np.bincount(np.array(frames) - 1))]
    table = pd.read_csv(path)
    np.testing.assert_array_equal(
        density_stack(emitters, 5, 24, 40, brightness_threshold=None),
        density_stack(table, 5, 24, 40, brightness_threshold=None),
    )


def test_emitters_are_only_used_for_the_stack_and_threshold_they_were_read_for():
    gt = emitters([2, 1, 2], [3.5, 4.0, 1.0], [1.5, 2.0, 6.0], brightness=[1000, 100, 800])
    compact = read_emitters(gt, 2, 8, 8, brightness_threshold=250)
    assert isinstance(compact, Emitters) and len(compact) == 2 and compact.brightest == 1000
    assert compact.label == "DataFrame" and "2 from DataFrame" in repr(compact)
    np.testing.assert_array_equal(count_per_frame(compact, 2, height=8, width=8), [0, 2])
    np.testing.assert_array_equal(density_stack(compact, 2, 8, 8), density_stack(gt, 2, 8, 8))
    for args in [(3, 8, 8, 250), (2, 8, 12, 250), (2, 8, 8, 500), (2, 8, 8, None)]:
        n_frames, height, width, threshold = args
        with pytest.raises(GroundTruthError, match="DataFrame: emitters read for .* read them"):
            density_stack(compact, n_frames, height, width, brightness_threshold=threshold)
    with pytest.raises(GroundTruthError, match="emitters read for"):
        count_per_frame(compact, 2)  # read with a frame size, counted without
    pd.testing.assert_frame_equal(
        gt, emitters([2, 1, 2], [3.5, 4.0, 1.0], [1.5, 2.0, 6.0], brightness=[1000, 100, 800])
    )
    nothing = read_emitters(gt, 2, 8, 8, brightness_threshold=5000)
    assert (
        len(nothing) == 0
        and nothing.brightest == 1000
        and not density_stack(nothing, 2, 8, 8, brightness_threshold=5000).any()
    )


MEMORY_CHILD = """
import json, sys
from defcon import datasets, groundtruth
folder, way = sys.argv[1:]
datasets.CHUNK_BYTES = 1 << 20  # frames of 1 MB at a time: the CSV dominates the memory
def peak():  # MiB; unlike ru_maxrss, VmHWM does not start at the parent's peak
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
before = peak()
if way == "add_dataset":
    with datasets.TrainingSet(folder + "/set.h5", "w") as ts:
        ts.add_dataset("big", folder + "/stack.tif", folder + "/frame_logger.csv")
else:
    groundtruth.count_per_frame(folder + "/frame_logger.csv", 2000, height=64, width=64)
print(json.dumps(peak() - before))
"""


@pytest.fixture(scope="module")
def large_csv(tmp_path_factory):
    """A 54 MB frame logger (1.3 million emitters, 650 in each of 2000 frames of
    64 x 64 px, in frame order) with its uint16 stack; return their folder."""
    rng = np.random.default_rng(7)
    n_frames, per_frame, n = 2000, 650, 6500
    rests = [
        b",%d,%.4f,%.4f,0.0000,%.4f" % row
        for row in zip(
            range(n),
            rng.uniform(0, 64, n),
            rng.uniform(0, 64, n),
            rng.uniform(100, 3000, n).round(),
        )
    ]
    folder = tmp_path_factory.mktemp("large")
    with open(folder / "frame_logger.csv", "wb") as file:
        file.write(HEADER.encode() + b"\n")
        for f in range(1, n_frames + 1):  # 10 patterns of positions, in turn
            file.write(
                b"%d" % f + (b"\n%d" % f).join(rests[(f % 10) * per_frame :][:per_frame]) + b"\n"
            )
    tifffile.imwrite(
        folder / "stack.tif", rng.integers(0, 1000, (n_frames, 64, 64), dtype=np.uint16)
    )
    return folder


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
@pytest.mark.parametrize("way", ["add_dataset", "count_per_frame"])
def test_reading_a_large_csv_stays_in_bounded_memory(large_csv, way):
    # Reading the whole 54 MB CSV with pandas raised the peak by 130-190 MiB;
    # streaming it needs one chunk (~20 MiB) plus 16 bytes per emitter kept (~20 MiB).
    assert (large_csv / "frame_logger.csv").stat().st_size > 50e6
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_CHILD), str(large_csv), way],
        capture_output=True,
        text=True,
        check=True,
    )
    growth_mib = json.loads(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 80, f"peak RSS grew by {growth_mib:.0f} MiB with {way}"


# --------------------------------------------------------------------------- real SASS files
@pytest.mark.skipif(
    not REFERENCE.is_dir(), reason=f"reference frame loggers not found at {REFERENCE}"
)
@pytest.mark.parametrize("name, low, high", [("data_1", 5, 9), ("data_2", 20, 30)])
def test_real_sass_frame_loggers(name, low, high):
    path = REFERENCE / f"{name}_frame_logger.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error", GroundTruthWarning)
        gt = read_ground_truth(path, n_frames=1500, height=64, width=64)
    assert list(gt.columns) == ["frame", "id", "x", "y", "z", "brightness"]
    assert gt["frame"].between(1, 1500).all()
    counts = count_per_frame(gt, 1500)
    assert low < counts.mean() < high
    density = density_stack(gt, 1500, 64, 64, frame_range=(0, 300))
    sums = density.sum(axis=(1, 2), dtype=np.float64)
    assert np.all(sums <= counts[:300] + 1e-4)  # mass is only lost at the frame edges
    assert sums.sum() > 0.97 * counts[:300].sum()
