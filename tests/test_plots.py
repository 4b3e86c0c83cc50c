"""The pictures of defcon.plots: counts per frame, one frame's overlay, training curves."""

import math
import struct

import numpy as np
import pytest
import tifffile

from defcon import plots
from defcon.cli import main
from defcon.errors import OverwriteError, ParameterError

N_FRAMES, HEIGHT, WIDTH = 40, 40, 56
NAN_FRAME = 6  # 1-based: holds a NaN pixel, so it gets the flag nan_pixels


def png_size(path):
    """``(width, height)`` of a PNG, from its IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == plots.PNG_SIGNATURE
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def stack_files(tmp_path_factory):
    """A simulated 40 x 56 float stack of 40 frames (frame 6 holds a NaN) and its frame logger."""
    from defcon.simulate import simulate_stack

    folder = tmp_path_factory.mktemp("plots")
    stack, truth = simulate_stack(N_FRAMES, HEIGHT, WIDTH, seed=3, density_sweep=(0.2, 2.0))
    frames = stack.astype(np.float32)
    frames[NAN_FRAME - 1, 4, 7] = np.nan
    tifffile.imwrite(folder / "stack.tif", frames)
    truth.to_csv(folder / "frame_logger.csv", index=False, float_format="%.4f")
    return folder / "stack.tif", folder / "frame_logger.csv", truth


@pytest.fixture(scope="module")
def model():
    from defcon.networks import FCN

    return FCN.pretrained()


@pytest.fixture
def spy(monkeypatch):
    """Record what a defcon.plots function returns while the code under test calls it."""

    def watch(name):
        calls, real = [], getattr(plots, name)

        def wrapper(*args, **kwargs):
            calls.append(real(*args, **kwargs))
            return calls[-1]

        monkeypatch.setattr(plots, name, wrapper)
        return calls

    return watch


def test_predict_writes_a_png_of_the_csv_values(tmp_path, stack_files, spy, capsys):
    stack, _, _ = stack_files
    drawn = spy("plot_counts")
    assert main(["predict", "pretrained", str(stack), "--counts", str(tmp_path / "c.csv")]) == 1
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "c.png").exists()  # no --nan-frames
    args = ["predict", "pretrained", str(stack), "--nan-frames", "flag", "--counts"]
    assert main([*args, str(tmp_path / "c.csv")]) == 0
    assert f"plot: {tmp_path / 'c.png'}" in capsys.readouterr().out
    png = tmp_path / "c.png"
    assert png.stat().st_size > 10_000
    assert png_size(png) == tuple(round(side * plots.COUNTS_DPI) for side in plots.COUNTS_FIGSIZE)
    (plot,) = drawn
    table = plots.read_counts_csv(tmp_path / "c.csv")
    assert plot.path == png
    np.testing.assert_array_equal(plot.frames, np.arange(1, N_FRAMES + 1))
    np.testing.assert_array_equal(plot.frames, table.frames)
    np.testing.assert_allclose(plot.counts, table.counts, rtol=0, atol=1e-9)
    np.testing.assert_allclose(plot.max_local_counts, table.max_local_counts, rtol=0, atol=1e-9)
    assert np.isnan(plot.counts[NAN_FRAME - 1]) and np.isfinite(np.delete(plot.counts, 5)).all()
    window = plots.rolling_window(N_FRAMES)
    assert plot.window == window == 3
    np.testing.assert_allclose(
        plot.rolling_counts, plots.rolling_mean(table.counts, window), rtol=0, atol=1e-9
    )
    # every flag of the CSV is marked at exactly its frames
    names = {f for flag in table.flags for f in flag.split("+") if f}
    assert "nan_pixels" in names and set(plot.marked) == names
    for name in names:
        expected = [f for f, flag in zip(table.frames, table.flags) if name in flag.split("+")]
        np.testing.assert_array_equal(plot.marked[name], expected)
    # a re-run replaces the PNG; --no-plot writes none
    before = png.stat().st_mtime_ns
    assert main([*args, str(tmp_path / "c.csv")]) == 0
    assert png.stat().st_mtime_ns > before
    capsys.readouterr()
    assert main([*args, str(tmp_path / "d.csv"), "--no-plot"]) == 0
    assert (tmp_path / "d.csv").exists() and not (tmp_path / "d.png").exists()
    assert "plot:" not in capsys.readouterr().out


def test_plot_of_a_csv_equals_the_plot_of_its_result(tmp_path, stack_files, model):
    from defcon.predict import count_tiff

    stack, _, _ = stack_files
    result = count_tiff(
        model,
        stack,
        index=slice(10, 20),
        counts=tmp_path / "c.csv",
        stack_options={"nonfinite": "flag"},
        plot=True,
    )
    assert result.plot_path == tmp_path / "c.png" and png_size(result.plot_path) == (1000, 560)
    again = plots.plot_counts(tmp_path / "c.csv", tmp_path / "again.png", box_size=7)
    from_result = plots.plot_counts(result, tmp_path / "from_result.png")
    np.testing.assert_array_equal(again.frames, np.arange(11, 21))
    for name in ("frames", "counts", "max_local_counts", "rolling_counts"):
        np.testing.assert_array_equal(getattr(again, name), getattr(from_result, name))
    np.testing.assert_allclose(from_result.counts, result.counts, rtol=0, atol=5e-5)


def test_flags_are_marked_also_without_values(tmp_path):
    flags = [""] * 30
    flags[3], flags[10], flags[11], flags[29] = "nan_pixels", "too_dense", "too_dense+psf_wide", "x"
    counts = np.linspace(1, 30, 30)
    counts[3] = np.nan
    table = plots.CountsTable(np.arange(1, 31), counts, counts / 4, tuple(flags))
    plot = plots.plot_counts(table, tmp_path / "p.png", box_size=5, title="synthetic")
    assert {k: v.tolist() for k, v in plot.marked.items()} == {
        "nan_pixels": [4],
        "too_dense": [11, 12],
        "psf_wide": [12],
        "x": [30],
    }
    assert plot.rolling_counts[3] == pytest.approx((counts[2] + counts[4]) / 2)


def test_png_outputs_replace_only_pngs(tmp_path, stack_files, model):
    from defcon.predict import count_tiff

    stack, _, _ = stack_files
    (tmp_path / "c.png").write_text("my notes")
    options = dict(index=[0, 1], counts=tmp_path / "c.csv", plot=True)
    with pytest.raises(OverwriteError, match="c.png: exists and is not a counts plot"):
        count_tiff(model, stack, **options)
    assert not (tmp_path / "c.csv").exists()
    count_tiff(model, stack, overwrite=True, **options)
    assert png_size(tmp_path / "c.png")
    with pytest.raises(OverwriteError, match="both the counts plot and another output"):
        count_tiff(model, stack, index=[0], counts=tmp_path / "new.png", plot=True)
    with pytest.raises(ParameterError, match="give counts too"):
        count_tiff(model, stack, index=[0], plot=True)


def test_overlay_out_of_range_names_the_valid_frames(tmp_path, stack_files, model, capsys):
    stack, _, _ = stack_files
    for frame in (0, N_FRAMES + 1):
        with pytest.raises(ParameterError, match=f"frames are 1 to {N_FRAMES}"):
            plots.plot_overlay(model, stack, frame, tmp_path / "o.png")
    args = ["predict", "pretrained", str(stack), "--counts", str(tmp_path / "c.csv")]
    assert main([*args, "--overlay", str(N_FRAMES + 1)]) == 1
    assert f"overlay frame {N_FRAMES + 1} is outside the stack" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # refused before counting
    assert main([*args, "--ground-truth", str(stack)]) == 1
    assert "give both" in capsys.readouterr().err


def test_overlay_marks_the_emitters_of_its_frame(tmp_path, stack_files, spy, capsys):
    stack, logger, truth = stack_files
    frame = 12
    args = ["predict", "pretrained", str(stack), "--nan-frames", "flag", "--overlay", str(frame)]
    counts = tmp_path / "c.csv"
    drawn = spy("plot_overlay")
    assert main([*args, "--counts", str(counts), "--ground-truth", str(logger)]) == 0
    overlay = tmp_path / f"stack_overlay_{frame}.png"
    assert f"overlay: {overlay}" in capsys.readouterr().out
    assert overlay.stat().st_size > 10_000 and png_size(overlay) == (1500, 480)
    (result,) = drawn
    assert result.path == overlay and result.frame == frame
    expected = truth.loc[truth.frame == frame, ["x", "y"]].to_numpy()
    assert len(expected) > 0 and result.box is None
    np.testing.assert_allclose(
        np.sort(result.positions, axis=0), np.sort(expected, axis=0), atol=1e-4
    )
    row = plots.read_counts_csv(counts)
    assert result.count == pytest.approx(row.counts[frame - 1], abs=1e-3)
    assert result.max_local_count == pytest.approx(row.max_local_counts[frame - 1], abs=1e-3)


def test_overlay_without_ground_truth_draws_the_densest_box(tmp_path, stack_files, model):
    from defcon.predict import local_count_map

    stack, _, _ = stack_files
    result = plots.plot_overlay(
        model, stack, 30, tmp_path / "o.png", box_size=5, stack_options={"nonfinite": "flag"}
    )
    density = model.predict_tiff(stack, index=[29], stack_options={"nonfinite": "flag"})
    boxes = local_count_map(density[0, ..., 0], 5)
    row, col = np.unravel_index(np.argmax(boxes), boxes.shape)
    assert result.box == (row, col, 5) and result.positions is None
    assert result.max_local_count == pytest.approx(boxes.max(), abs=1e-5)
    assert png_size(tmp_path / "o.png") == (1500, 480)


def test_training_curves_mark_the_kept_epochs(tmp_path, spy):
    from defcon.train import _plot_curves

    history = {  # (loss, val_loss, val_count_mae) per epoch; density epochs 3 and 4 tie
        "seg": [(1.0, 0.9, math.nan), (0.8, 0.7, math.nan), (0.7, 0.75, math.nan)],
        "density": [(1.0, 0.9, 3.0), (0.8, 0.8, 2.0), (0.7, 0.6, 1.5), (0.6, 0.6, 1.2)]
        + [(0.5, 0.65, 1.4)] * 8,
    }
    rows = [
        dict(epoch=k, stage=stage, loss=a, val_loss=b, val_count_mae=c)
        for stage, epochs in history.items()
        for k, (a, b, c) in enumerate(epochs, 1)
    ]
    drawn = spy("plot_training_curves")
    path = _plot_curves(rows, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png" and path.stat().st_size > 10_000
    (plot,) = drawn
    assert plot.kept_epochs == {"seg": 2, "density": 3}  # the first of the lowest val_loss
    assert len(plot.epoch_ticks) and np.all(plot.epoch_ticks == np.round(plot.epoch_ticks))
    assert plots.kept_epoch(rows, "density") == 3 and plots.kept_epoch([], "seg") is None


def test_many_stacks_get_a_png_each(tmp_path, stack_files, capsys):
    from defcon.distributed import count_stacks

    stack, _, _ = stack_files
    (tmp_path / "a.tif").write_bytes(stack.read_bytes())
    options = dict(summary=None, stack_options={"nonfinite": "flag"}, index=[0, 5, 9])
    (result,) = count_stacks("pretrained", [tmp_path / "a.tif"], plot=True, **options)
    assert result.ok and result.counts.plot_path == tmp_path / "a_counts.png"
    assert png_size(tmp_path / "a_counts.png") == (1000, 560)
    with pytest.raises(ParameterError, match="plot is True or False"):
        count_stacks("pretrained", [tmp_path / "a.tif"], plot=tmp_path / "p.png", **options)
    args = ["predict", "pretrained", str(tmp_path), "--overlay", "2"]
    assert main(args) == 1 and "one frame of one stack" in capsys.readouterr().err
