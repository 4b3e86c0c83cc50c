"""Pictures of what defcon counted and trained: PNGs beside the numbers.

* :func:`plot_counts`: the count and the maximum local count of every frame of
  a stack, with a rolling mean and the flagged frames marked (``defcon
  predict`` writes it as ``STACK_counts.png`` beside the counts CSV).
* :func:`plot_overlay`: one frame raw, its density map, and the densest box
  (or the true positions of a ground-truth table) drawn on it (``--overlay N``).
* :func:`plot_training_curves`: losses per stage and the validation count error
  per epoch, the kept (best) epoch of each stage marked (``curves.png``).

Figures are drawn with a matplotlib ``Figure`` and ``FigureCanvasAgg`` (no pyplot
state, so they can be drawn in threads and Dask workers) and written atomically.
Each function returns what it drew, read back from the figure's artists, so the
picture can be checked against the numbers it shows.
"""

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

from .errors import OverwriteError, ParameterError, UnsupportedFileError
from .files import atomic_path, check_output

#: The first bytes of every PNG file.
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Longest rolling-mean window of :func:`plot_counts`, frames (odd: centred on a frame).
ROLLING_WINDOW = 51
#: Size (inches) and resolution of the counts plot: 1000 x 560 pixels.
COUNTS_FIGSIZE, COUNTS_DPI = (10.0, 5.6), 100
#: Size (inches) and resolution of the overlay: 1500 x 480 pixels.
OVERLAY_FIGSIZE, OVERLAY_DPI = (15.0, 4.8), 100
#: Colours of the flags of the counts CSV; other flags take the next colours of the cycle.
FLAG_COLOURS = {
    "psf_wide": "C3",
    "psf_narrow": "C1",
    "too_dense": "C4",
    "nan_pixels": "k",
    "truncated": "C5",
}
#: Decimals of the counts CSV: plots of a counting result show the CSV's numbers exactly.
CSV_DECIMALS = 4


# --------------------------------------------------------------- counts per frame
@dataclasses.dataclass(frozen=True, eq=False)
class CountsTable:
    """The columns of a counts CSV (``defcon predict``).

    Attributes
    ----------
    frames : ndarray of shape (N,), int64
        1-based frame numbers, as in the CSV.
    counts, max_local_counts : ndarray of shape (N,), float64
        NaN where the CSV's cell is empty (frames holding NaN pixels).
    flags : tuple of str, length N
        '' or flags joined by '+'.
    """

    frames: np.ndarray
    counts: np.ndarray
    max_local_counts: np.ndarray
    flags: tuple

    @classmethod
    def from_result(cls, result):
        """The table :func:`~defcon.predict.count_tiff` writes for ``result`` (a StackCounts).

        Values are rounded as the CSV writes them (``CSV_DECIMALS``), so a plot
        of the result and a plot of its CSV show the same numbers.
        """
        return cls(
            frames=np.asarray(result.frames, np.int64) + 1,
            counts=_as_written(result.counts),
            max_local_counts=_as_written(result.max_local_counts),
            flags=tuple(result.flags),
        )


def read_counts_csv(path):
    """Read a counts CSV written by ``defcon predict``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    CountsTable

    Raises
    ------
    UnsupportedFileError
        ``path`` is not a counts CSV (header ``frame,count,max_local_count,flag``).
    """
    from .predict import COUNT_COLUMNS, is_counts_csv

    if not is_counts_csv(path):
        raise UnsupportedFileError(
            f"{path}: not a counts CSV (expected the header {','.join(COUNT_COLUMNS)})"
        )
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return CountsTable(
        frames=np.array([int(r["frame"]) for r in rows], np.int64),
        counts=np.array([_cell(r["count"]) for r in rows], np.float64),
        max_local_counts=np.array([_cell(r["max_local_count"]) for r in rows], np.float64),
        flags=tuple(r["flag"] or "" for r in rows),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class CountsPlot:
    """What :func:`plot_counts` drew, read back from the figure.

    Attributes
    ----------
    path : Path
        The PNG.
    frames : ndarray of shape (N,)
        x values, 1-based frames.
    counts, max_local_counts : ndarray of shape (N,)
        The per-frame values of the two panels (NaN: frames not counted).
    window : int
        Frames of the centred rolling mean.
    rolling_counts, rolling_max_local_counts : ndarray of shape (N,)
        The rolling means drawn over them.
    marked : dict of str to ndarray of int
        Each flag of the CSV to the 1-based frames marked with it.
    """

    path: Path
    frames: np.ndarray
    counts: np.ndarray
    max_local_counts: np.ndarray
    window: int
    rolling_counts: np.ndarray
    rolling_max_local_counts: np.ndarray
    marked: dict


def plot_counts(source, path, *, box_size=None, title=None):
    """Plot the count and the maximum local count of every frame to a PNG.

    Two panels sharing the frame axis (1-based, as in the CSV): the values per
    frame in grey, their centred rolling mean (:func:`rolling_window` frames,
    named in the legend) in colour. Frames with a flag get a coloured ring at
    their value, or a tick at the bottom of the panel when they have no value
    (``nan_pixels``); the legend names each flag and its number of frames.

    Parameters
    ----------
    source : StackCounts, CountsTable, str or Path
        What :func:`~defcon.predict.count_tiff` returned, a table, or a counts CSV.
    path : str or Path
        The PNG (written atomically; an existing file is replaced).
    box_size : int, optional
        Side of the box of the maximum local count, for the axis label
        (default: the StackCounts', else not named).
    title : str, optional

    Returns
    -------
    CountsPlot
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    table = _counts_table(source)
    box_size = box_size if box_size is not None else getattr(source, "box_size", None)
    window = rolling_window(len(table.frames))
    fig = Figure(figsize=COUNTS_FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    local = f"max local count ({box_size}x{box_size} box)" if box_size else "max local count"
    drawn = []
    for ax, values, name in zip(axes, (table.counts, table.max_local_counts), ("count", local)):
        marker = "." if len(values) <= 300 else None  # a line alone hides single frames
        (per_frame,) = ax.plot(
            table.frames, values, color="0.6", lw=0.8, marker=marker, ms=3, label="per frame"
        )
        (mean,) = ax.plot(
            table.frames,
            rolling_mean(values, window),
            color="C0",
            lw=1.8,
            label=f"rolling mean ({window} frame{'s' * (window > 1)}, centred)",
        )
        _mark_flags(ax, table.frames, values, table.flags)
        ax.set_ylabel(name)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the data
        drawn.append((per_frame, mean))
    axes[-1].set_xlabel("frame")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=COUNTS_DPI)
    (count_line, count_mean), (local_line, local_mean) = drawn
    return CountsPlot(
        path=Path(path),
        frames=np.asarray(count_line.get_xdata()),
        counts=np.asarray(count_line.get_ydata(), np.float64),
        max_local_counts=np.asarray(local_line.get_ydata(), np.float64),
        window=window,
        rolling_counts=np.asarray(count_mean.get_ydata(), np.float64),
        rolling_max_local_counts=np.asarray(local_mean.get_ydata(), np.float64),
        marked=_marked_frames(axes[0]),
    )


def rolling_window(n_frames):
    """Frames of the rolling mean of :func:`plot_counts`: about n / 20, odd, at most 51.

    Examples
    --------
    >>> rolling_window(10), rolling_window(40), rolling_window(200), rolling_window(10**5)
    (1, 3, 11, 51)
    """
    window = int(min(ROLLING_WINDOW, max(1, round(n_frames / 20))))
    return window + 1 - window % 2


def rolling_mean(values, window):
    """Centred rolling mean over ``window`` frames, ignoring NaN values.

    Parameters
    ----------
    values : ndarray of shape (N,)
    window : int

    Returns
    -------
    ndarray of shape (N,), float64
        The mean of the finite values in each window (shorter at the ends);
        NaN where a window holds none.
    """
    import pandas as pd

    series = pd.Series(np.asarray(values, np.float64))
    return series.rolling(int(window), center=True, min_periods=1).mean().to_numpy()


def counts_plot_path(counts):
    """The counts plot beside a counts CSV: its path with ``.png`` for its suffix."""
    return Path(counts).with_suffix(".png")


def is_png(path):
    """True if ``path`` is a PNG file (by its signature)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
    except OSError:
        return False


def check_png_output(path, inputs=(), outputs=(), *, overwrite=False, what="plot"):
    """Refuse a PNG output that would replace an input, another output or a non-PNG file.

    An existing PNG is replaced (re-running a command replaces its pictures);
    any other existing file only with ``overwrite``, as
    :func:`~defcon.files.check_output` does for the counts CSV.

    Parameters
    ----------
    path : str or Path
        The ``.png`` about to be written.
    inputs : iterable of str or Path
        Files the command reads (None entries are skipped).
    outputs : iterable of str or Path
        Other files the command writes (None entries are skipped).
    overwrite : bool
    what : str
        What the PNG is, for the messages.

    Raises
    ------
    UnsupportedFileError
        ``path`` does not end in ``.png``.
    OverwriteError
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UnsupportedFileError(f"{path}: the {what} is a PNG; choose a name ending in .png")
    for other in outputs:
        if other is not None and Path(other).resolve() == path.resolve():
            raise OverwriteError(
                f"{path}: named for both the {what} and another output; choose another path"
            )
    check_output(path, inputs, same_kind=is_png, overwrite=overwrite, what=f"{what} (PNG)")


# ------------------------------------------------------------------ one frame
@dataclasses.dataclass(frozen=True, eq=False)
class OverlayPlot:
    """What :func:`plot_overlay` drew, read back from the figure.

    Attributes
    ----------
    path : Path
    frame : int
        1-based.
    count, max_local_count : float
        The frame's density sum and densest box sum (the titles' numbers).
    box : tuple of int or None
        ``(row, column, side)`` of the densest box drawn (top-left pixel), or
        None when true positions were drawn instead.
    positions : ndarray of shape (K, 2) or None
        ``(x, y)`` of the true positions drawn, in pixels (centre of pixel
        (r, c) at (c + 0.5, r + 0.5)), or None without a ground truth.
    """

    path: Path
    frame: int
    count: float
    max_local_count: float
    box: tuple | None
    positions: np.ndarray | None


def overlay_path(counts, stack, frame):
    """``STACK_overlay_N.png`` beside the counts CSV ``counts``."""
    return Path(counts).with_name(f"{Path(stack).stem}_overlay_{int(frame)}.png")


def overlay_index(stack, frame, stack_options=None):
    """The 0-based index of the 1-based ``frame`` of a stack, checked.

    Parameters
    ----------
    stack : str or Path
        A TIFF stack (opened to read its number of frames).
    frame : int
        1-based, as in the counts CSV.
    stack_options : dict, optional
        See :class:`~defcon.tiffio.TiffStack`.

    Raises
    ------
    ParameterError
        ``frame`` is outside the stack; the message names the valid range.
    """
    from .tiffio import TiffStack

    with TiffStack(stack, **(stack_options or {})) as tiff:
        return _frame_index(frame, len(tiff), tiff.path)


def plot_overlay(
    model,
    stack,
    frame,
    path,
    *,
    ground_truth=None,
    box_size=7,
    stack_options=None,
    precision=None,
):
    """Draw one frame raw, its density map, and where the emitters are, to a PNG.

    Three panels, each with a colour bar: the raw frame; its density map
    (titled with the count); the raw frame again with the true positions of
    ``ground_truth`` in that frame (rings), or without one the densest
    ``box_size`` x ``box_size`` box of the density (titled with its count).

    Parameters
    ----------
    model : FCN, str or Path
        A density network, or a model file or shipped model's name.
    stack : str or Path
        A TIFF stack.
    frame : int
        1-based, as in the counts CSV.
    path : str or Path
        The PNG (written atomically; an existing file is replaced).
    ground_truth : str, Path, pandas.DataFrame or Localizations, optional
        Any table :func:`defcon.groundtruth.read_emitters` reads (frame-logger
        CSV, ThunderSTORM, Picasso, DECODE); every emitter of the frame is drawn,
        whatever its brightness.
    box_size : int
    stack_options : dict, optional
        See :class:`~defcon.tiffio.TiffStack`.
    precision : {'float32', 'bfloat16'}, optional

    Returns
    -------
    OverlayPlot

    Raises
    ------
    ParameterError
        ``frame`` is outside the stack.
    GroundTruthError, UnsupportedFileError, MissingFileError
        ``ground_truth`` cannot be read, or names frames beyond the stack.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from .predict import _density_network, local_count_map, predict_tiff
    from .tiffio import TiffStack

    with TiffStack(stack, **(stack_options or {})) as tiff:
        index = _frame_index(frame, len(tiff), tiff.path)
        raw = tiff.read(index, index + 1)[0]
        n_frames, height, width = tiff.shape
        name = tiff.path.name
    density = predict_tiff(
        _density_network(model),
        stack,
        index=[index],
        precision=precision,
        check_envelope=False,
        stack_options=stack_options,
    )[0, :, :, 0]
    boxes = local_count_map(density, box_size)
    count = float(density.sum(dtype=np.float64))
    max_local = float(boxes.max())
    b = int(box_size)
    fig = Figure(figsize=OVERLAY_FIGSIZE, layout="constrained")
    FigureCanvasAgg(fig)
    ax_raw, ax_density, ax_marked = fig.subplots(1, 3)
    extent = (0, width, height, 0)  # pixel (r, c) spans [c, c + 1] x [r, r + 1]
    bar = min(0.9, max(0.4, height / width))  # colour bars about as tall as wide frames
    for ax, image, cmap, label in (
        (ax_raw, raw, "gray", "pixel value"),
        (ax_density, density, "magma", "emitters per pixel"),
        (ax_marked, raw, "gray", "pixel value"),
    ):
        shown = ax.imshow(image, cmap=cmap, extent=extent, interpolation="nearest")
        fig.colorbar(shown, ax=ax, label=label, shrink=bar)
    ax_raw.set_title(f"frame {frame}: raw", fontsize=10)
    ax_density.set_title(f"density map: count {count:.2f}", fontsize=10)
    box = positions = None
    if ground_truth is not None:
        x, y = _frame_emitters(ground_truth, index, n_frames, height, width)
        rings = ax_marked.scatter(
            x, y, s=60, facecolors="none", edgecolors="C1", linewidths=1.2, label="true position"
        )
        ax_marked.set_title(
            f"{len(x)} true emitters (count {count:.2f}, max local {max_local:.2f})", fontsize=10
        )
        positions = np.asarray(rings.get_offsets(), np.float64).reshape(-1, 2)
    elif np.isfinite(max_local):
        r, c = np.unravel_index(int(np.argmax(boxes)), boxes.shape)
        rect = ax_marked.add_patch(Rectangle((c, r), b, b, fill=False, edgecolor="C1", linewidth=2))
        ax_marked.set_title(f"densest {b}x{b} box: {max_local:.2f} emitters", fontsize=10)
        x0, y0 = rect.get_xy()
        box = (int(y0), int(x0), int(rect.get_width()))
    fig.suptitle(
        f"{name}, frame {frame} of {n_frames}: count {count:.2f}, "
        f"max local count {max_local:.2f} ({b}x{b} box)"
    )
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=OVERLAY_DPI)
    return OverlayPlot(Path(path), int(frame), count, max_local, box, positions)


# ------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True, eq=False)
class TrainingCurvesPlot:
    """What :func:`plot_training_curves` drew.

    Attributes
    ----------
    path : Path
    kept_epochs : dict of str to int
        Each stage to the epoch marked as kept (1-based), read from its marker line.
    epoch_ticks : ndarray of shape (T,)
        The epoch ticks of the first panel (within its limits): whole numbers.
    """

    path: Path
    kept_epochs: dict
    epoch_ticks: np.ndarray


def kept_epoch(rows, stage):
    """The epoch training keeps for ``stage``: the first with the lowest val_loss.

    Training restores the weights of this epoch (Keras ``EarlyStopping`` with
    ``restore_best_weights``, which counts only strict improvements).

    Parameters
    ----------
    rows : list of dict
        History rows: ``epoch`` (1-based), ``stage``, ``val_loss``, ...
    stage : str

    Returns
    -------
    int or None
        None when no epoch of the stage has a finite val_loss.
    """
    best = None
    for row in rows:
        value = row["val_loss"]
        if row["stage"] == stage and math.isfinite(value) and (best is None or value < best[1]):
            best = (int(row["epoch"]), value)
    return None if best is None else best[0]


def plot_training_curves(rows, path):
    """Plot loss per stage and the validation count error per epoch to a PNG.

    One panel per stage (loss and val_loss, log scale) and one of the density
    stage's validation count MAE; the epoch each stage keeps
    (:func:`kept_epoch`) is marked by a dashed line and labelled; epochs are
    integer ticks.

    Parameters
    ----------
    rows : list of dict
        History rows with ``epoch`` (1-based), ``stage`` ('seg' or 'density'),
        ``loss``, ``val_loss`` and ``val_count_mae``.
    path : str or Path
        The PNG (written atomically).

    Returns
    -------
    TrainingCurvesPlot
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stages = [s for s in ("seg", "density") if any(r["stage"] == s for r in rows)]
    fig = Figure(figsize=(4.5 * (len(stages) + 1), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(stages) + 1, squeeze=False)[0]
    kept = {}
    for ax, stage in zip(axes, stages):
        stage_rows = [r for r in rows if r["stage"] == stage]
        for column in ("loss", "val_loss"):
            ax.plot(
                [r["epoch"] for r in stage_rows],
                [r[column] for r in stage_rows],
                marker="o",
                label=column,
            )
        ax.set(title=f"{stage} stage", xlabel="epoch", ylabel="loss", yscale="log")
        kept[stage] = _mark_kept(ax, kept_epoch(rows, stage), stage)
    density = [r for r in rows if r["stage"] == "density"]
    axes[-1].plot(
        [r["epoch"] for r in density], [r["val_count_mae"] for r in density], marker="o", color="C2"
    )
    axes[-1].set(
        title="validation count error", xlabel="epoch", ylabel="mean |count error| per frame"
    )
    _mark_kept(axes[-1], kept.get("density"), "density")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    marks = (line for ax in axes[: len(stages)] for line in ax.get_lines())
    low, high = axes[0].get_xlim()
    ticks = np.asarray(axes[0].get_xticks(), np.float64)
    return TrainingCurvesPlot(
        Path(path),
        {
            line.get_gid().split(":", 1)[1]: int(line.get_xdata()[0])
            for line in marks
            if (line.get_gid() or "").startswith("kept:")
        },
        ticks[(ticks >= low) & (ticks <= high)],
    )


# ---------------------------------------------------------------- internals
def _counts_table(source):
    if isinstance(source, CountsTable):
        return source
    if isinstance(source, (str, Path)):
        return read_counts_csv(source)
    return CountsTable.from_result(source)


def _as_written(values):
    """``values`` as the counts CSV holds them: rounded to ``CSV_DECIMALS``, NaN kept."""
    return np.array(
        [float(f"{v:.{CSV_DECIMALS}f}") if math.isfinite(v) else math.nan for v in values],
        np.float64,
    )


def _cell(text):
    return float(text) if text.strip() else math.nan


def _flag_frames(flags):
    """Each flag to the mask of the frames carrying it, in order of first appearance."""
    names = dict.fromkeys(f for frame in flags for f in frame.split("+") if f)
    parts = [set(frame.split("+")) for frame in flags]
    return {name: np.array([name in p for p in parts], bool) for name in names}


def _mark_flags(ax, frames, values, flags):
    """Ring the flagged frames' values; tick those without a value at the panel's bottom."""
    frames, values = np.asarray(frames), np.asarray(values, np.float64)
    spare = (f"C{k}" for k in (2, 6, 7, 8, 9))
    for name, mask in _flag_frames(flags).items():
        colour = FLAG_COLOURS.get(name) or next(spare, "0.3")
        n = int(mask.sum())
        label = f"{name} ({n} frame{'s' * (n > 1)})"
        valued = mask & np.isfinite(values)
        if valued.any():
            ax.plot(
                frames[valued],
                values[valued],
                linestyle="none",
                marker="o",
                ms=5,
                mfc="none",
                color=colour,
                label=label,
                gid=f"flag:{name}",
            )
            label = None
        if (mask & ~valued).any():
            ax.plot(
                frames[mask & ~valued],
                np.full(int((mask & ~valued).sum()), 0.03),
                linestyle="none",
                marker="|",
                ms=10,
                color=colour,
                transform=ax.get_xaxis_transform(),  # y in axes fractions: at the bottom
                label=label,
                gid=f"flag:{name}",
            )


def _marked_frames(ax):
    """Each flag to the frames its markers on ``ax`` stand at, sorted."""
    marked = {}
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("flag:"):
            name = gid.split(":", 1)[1]
            xs = np.asarray(line.get_xdata(), np.int64)
            marked[name] = np.sort(np.concatenate([marked.get(name, xs[:0]), xs]))
    return marked


def _frame_index(frame, n_frames, path):
    """0-based index of a 1-based frame, or a ParameterError naming the valid range."""
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise ParameterError(f"overlay frame must be a whole number, got {frame!r}")
    if not 1 <= frame <= n_frames:
        raise ParameterError(
            f"{path}: overlay frame {frame} is outside the stack: frames are 1 to "
            f"{n_frames} (1-based, as in the counts CSV)"
        )
    return int(frame) - 1


def _frame_emitters(ground_truth, index, n_frames, height, width):
    """``(x, y)`` arrays of every emitter of 0-based frame ``index`` in a ground-truth table."""
    from .groundtruth import read_emitters

    emitters = read_emitters(ground_truth, n_frames, height, width, brightness_threshold=None)
    rows = slice(int(emitters.starts[index]), int(emitters.starts[index + 1]))
    return emitters.x[rows], emitters.y[rows]


def _mark_kept(ax, epoch, stage):
    """A dashed line at the kept epoch of ``stage``, named in the legend (nothing when None)."""
    if epoch is None:
        return None
    ax.axvline(
        epoch,
        color="0.35",
        linestyle="--",
        linewidth=1,
        label=f"kept: epoch {epoch}",
        gid=f"kept:{stage}",
    )
    return epoch
