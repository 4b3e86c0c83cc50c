"""Tests for defcon.groundtruth: frame-logger reading, density and segmentation maps."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import erf
from scipy.stats import multivariate_normal

from defcon.errors import (
    DefconError,
    GroundTruthError,
    GroundTruthWarning,
    MissingFileError,
    UnsupportedFileError,
)
from conftest import make_ground_truth
from defcon.groundtruth import count_per_frame, density_stack, read_ground_truth, segmentation_stack

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "sass-frame-loggers"
HEADER = "frame,id,x,y,z,brightness"


def emitters(frame, x, y, brightness=1000.0):
    """A ground-truth DataFrame from parallel sequences (frames 1-based)."""
    frame, x, y = np.atleast_1d(frame), np.atleast_1d(x), np.atleast_1d(y)
    return pd.DataFrame({
        "frame": frame,
        "id": np.arange(len(frame)),
        "x": np.asarray(x, dtype=float),
        "y": np.asarray(y, dtype=float),
        "z": 0.0,
        "brightness": np.broadcast_to(brightness, frame.shape).astype(float),
    })


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
        (f"{HEADER}\n1,1,2,3,0,300\n2.5,1,2,3,0,300\n",
         ["'frame'", "2.5", "whole number", "line 3"]),
        (f"{HEADER}\n0,1,2,3,0,300\n", ["frame 0", "below 1", "line 2"]),
        (f"{HEADER}\n1,1,2,3,0,300\n6,1,2,3,0,300\n",
         ["frame 6", "line 3", "beyond the stack of 5 frames"]),
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
    rows = ["1,1,5,5,0,900", "1,2,-0.1,5,0,900", "2,3,40,5,0,900", "2,4,5,24,0,900",
            "2,5,39.9,23.9,0,900", "1,6,20,12,0,100", "2,7,20,12,0,100"]
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


@pytest.mark.parametrize("truth_shape, scale, cause", [((24, 80), 100.0, "nanometres"),
                                                        ((80, 24), 1.0, "swapped")])
def test_positions_mostly_outside_the_frame_are_an_error_naming_the_cause(tmp_path, truth_shape,
                                                                         scale, cause):
    # Positions in nm, or written for the transposed frame (x and y swapped).
    truth = make_ground_truth(3, *truth_shape, 6, seed=2)
    truth[["x", "y"]] *= scale
    path = tmp_path / "wrong.csv"
    truth.to_csv(path, index=False)
    with pytest.raises(GroundTruthError, match=f"wrong.csv: .*outside the 80 x 24 frame.*{cause}"):
        read_ground_truth(path, n_frames=3, height=24, width=80)


# --------------------------------------------------------------------------- real SASS files
@pytest.mark.skipif(not REFERENCE.is_dir(),
                    reason=f"reference frame loggers not found at {REFERENCE}")
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
