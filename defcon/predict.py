"""Density maps and counts for stacks of any length and frame size.

The network runs compiled (:mod:`defcon.engine`). A reader thread prepares the
next batch while the current one runs; frames are padded to multiples of 4 by
edge replication and cropped back; frames much larger than a batch are cut
into tiles overlapping by the receptive field, so results and memory do not
depend on the frame size.

Counts per frame are density sums; :func:`local_count_map` and
:func:`max_local_count` give the emitter count in sliding boxes, as
DEFCoN-ImageJ's local count map. Measured speeds: ``docs/performance.md``.
"""

import contextlib
import csv
import dataclasses
import logging
import math
import os
import queue
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from .engine import DEFAULT_PRECISION, PRECISIONS, compiled_network  # noqa: F401
from .errors import (
    FrameIndexError,
    ModelKindError,
    ParameterError,
    ShapeMismatchError,
    UnsupportedFileError,
)
from .files import atomic_path, check_free_space, check_output, hdf5_space
from .frames import SIDE_MULTIPLE, padded_side
from .progress import progress_bar
from .tiffio import TiffStack

log = logging.getLogger(__name__)

#: Pixels per batch when ``batch_size`` is None: the fastest measured (0.5-2 Mpx
#: were within a few %, 64 kpx ~1.5x slower) while activations stay ~200 MB.
BATCH_PIXELS = {"float32": 1 << 19, "bfloat16": 1 << 20}
#: Frames with more (padded) pixels than this are predicted tile by tile.
TILE_PIXELS = 1 << 22
#: Core side of a tile (multiple of 4); each tile adds :func:`receptive_margin` per side.
TILE_SIZE = 1024
#: Batches read ahead by the reader thread.
READ_AHEAD = 2
OUTPUT_SUFFIXES = (".tif", ".tiff", ".h5", ".hdf5")
COUNT_COLUMNS = ("frame", "count", "max_local_count", "flag")


# ------------------------------------------------------------------ public API
def predict_stack(model, stack, batch_size=None, *, precision=None, tile_size=None):
    """Predict density maps for frames in memory, any frame size.

    Frames are padded at the bottom and right to multiples of 4 by repeating the
    last row and column, and the density is cropped back.

    Parameters
    ----------
    model : FCN
        A density (or segmentation) network.
    stack : array_like of shape (H, W), (N, H, W) or (N, H, W, 1)
        Raw frames of any real dtype; every frame is min-max normalised inside.
    batch_size : int, optional
        Frames per network call (default: about ``BATCH_PIXELS[precision]`` pixels).
    precision : {'float32', 'bfloat16'}, optional
        Arithmetic of the network (default ``DEFAULT_PRECISION``).
    tile_size : int, optional
        Predict frames tile by tile with cores of this side (multiple of 4);
        default: only frames above ``TILE_PIXELS`` pixels, with ``TILE_SIZE``.

    Returns
    -------
    ndarray of shape (N, H, W, 1), float32

    Raises
    ------
    ShapeMismatchError
        ``stack`` does not have one of the shapes above.
    """
    frames = _as_frames(stack)
    runner = _Runner(model, precision, frames.shape[1:], batch_size, tile_size)
    out = np.empty(frames.shape + (1,), np.float32)
    batches = (
        (np.arange(a, min(a + runner.batch, len(frames))), frames[a : a + runner.batch])
        for a in range(0, len(frames), runner.batch)
    )
    for positions, density in runner.run(batches):
        out[positions] = density
    return out


def predict_tiff(
    model,
    input_file,
    index=None,
    *,
    batch_size=None,
    progress=False,
    precision=None,
    tile_size=None,
    check_envelope=True,
    stack_options=None,
    output=None,
):
    """Predict density maps for a TIFF stack, streaming it in chunks.

    To count emitters and write density maps and counts to files in bounded
    memory, use :func:`count_tiff`.

    Parameters
    ----------
    model : FCN
    input_file : str or Path
        A grey-level TIFF stack (8/16/32-bit integer or float).
    index : None, int, slice or sequence of int
        0-based frames to predict (default all; negative ints count from the end).
    batch_size : int, optional
        Frames read and predicted at a time (default: ``BATCH_PIXELS[precision]`` pixels).
    progress : bool
        Show a progress bar (frames/s; on a terminal only).
    precision, tile_size
        See :func:`predict_stack`.
    check_envelope : bool
        When the model records its training envelope, estimate the PSF width
        of each chunk and the density of each frame, and log a warning naming
        the frames outside it (see :mod:`defcon.envelope`).
    stack_options : dict, optional
        Passed to :class:`~defcon.tiffio.TiffStack`: ``series``, ``channel`` and
        ``z`` choose the planes of a hyperstack, ``allow_truncated=True`` reads
        the intact frames of a truncated file, ``nonfinite='flag'`` predicts
        frames holding NaN or infinite pixels as NaN (with a logged warning)
        instead of raising.
    output : str or Path, optional
        Deprecated (DeprecationWarning): writes the density maps to this file and
        returns the count of every frame, ndarray of shape (N,), instead of the
        maps; use ``count_tiff(model, input_file, density_output=output).counts``.

    Returns
    -------
    ndarray of shape (N, H, W, 1), float32
        The densities (NaN for frames with NaN pixels).

    Raises
    ------
    MissingFileError, UnsupportedFileError
        The input is missing or not a readable grey-level TIFF.
    FrameIndexError
        ``index`` names a frame outside the stack.
    """
    run = dict(batch_size=batch_size, progress=progress, precision=precision, tile_size=tile_size)
    if output is not None:
        _warn_deprecated(
            "predict_tiff(output=...) returns per-frame counts; "
            "use count_tiff(..., density_output=...)"
        )
        result = count_tiff(
            model,
            input_file,
            index=index,
            density_output=output,
            check_envelope=check_envelope,
            stack_options=stack_options,
            **run,
        )
        _log_problems(input_file, result.envelope_summary, int((~result.counted).sum()))
        return result.counts
    with TiffStack(input_file, **(stack_options or {})) as stack:
        frames = _frame_selection(index, len(stack), stack.path)
        out = np.empty((len(frames),) + stack.shape[1:] + (1,), np.float32)
        check = envelope_check_for(model, stack.shape[1:]) if check_envelope else None
        with contextlib.closing(_checked_chunks(model, stack, frames, check, **run)) as chunks:
            for pos, (_, density, _) in _positions(chunks):
                out[pos] = density
        skipped = len(stack.nonfinite_frames)
    _log_problems(input_file, check.summary() if check is not None else None, skipped)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class StackCounts:
    """What :func:`count_tiff` counted and wrote: one entry per frame counted.

    Attributes
    ----------
    frames : ndarray of shape (N,), int
        0-based frames counted (the counts CSV's ``frame`` column is ``frames + 1``).
    counts : ndarray of shape (N,), float64
        The density sum of every frame; NaN for frames holding NaN or infinite pixels.
    max_local_counts : ndarray of shape (N,), float64
        The largest count in a ``box_size`` x ``box_size`` box of every frame
        (see :func:`max_local_count`); NaN as ``counts``.
    flags : tuple of str, length N
        The CSV's ``flag`` column: '' or, joined by '+', ``psf_wide``,
        ``psf_narrow``, ``too_dense`` (outside the model's training envelope),
        ``nan_pixels`` (not counted) and ``truncated`` (the last intact frame).
    box_size : int
    envelope_summary : str or None
        One line on the frames outside the training envelope ('' when none);
        None when not checked (``check_envelope=False``, or the model records
        no envelope).
    truncated : tuple of (int or None, int) or None
        ``(declared frames or None, frames read)`` when the stack was truncated
        and ``allow_truncated`` read its intact frames, else None.
    counts_path, density_path, plot_path : Path or None
        The counts CSV, the density maps and the counts plot (PNG) written, if asked for.
    """

    frames: np.ndarray
    counts: np.ndarray
    max_local_counts: np.ndarray
    flags: tuple
    box_size: int
    envelope_summary: str | None
    truncated: tuple | None
    counts_path: Path | None
    density_path: Path | None
    plot_path: Path | None = None

    @property
    def counted(self):
        """Boolean mask, shape (N,): False for frames with NaN or infinite pixels."""
        return np.isfinite(self.counts)


def count_tiff(
    model,
    input_file,
    *,
    index=None,
    counts=None,
    density_output=None,
    box_size=7,
    batch_size=None,
    precision=None,
    tile_size=None,
    check_envelope=True,
    stack_options=None,
    progress=False,
    overwrite=False,
    plot=None,
    on_chunk=None,
):
    """Count the emitters of every frame of a TIFF stack, streaming it; ``defcon predict``.

    Each chunk of frames is predicted, optionally written to the density maps
    and the counts CSV, and reduced to per-frame counts, so memory stays
    bounded whatever the stack's length. Outputs are written atomically: they
    appear only when every frame was counted.

    Parameters
    ----------
    model : FCN, str or Path
        A density network (a 'both' network's density output is used), or a
        model file for :meth:`FCN.from_file <defcon.networks.FCN.from_file>`,
        loaded after the stack is opened (a bad stack fails first) and never
        replaced by an output.
    input_file : str or Path
        A grey-level TIFF stack (8/16/32-bit integer or float); never replaced
        by an output.
    index : None, int, slice or sequence of int
        0-based frames to count (default all, and then the number of frames
        counted is checked against the stack's).
    counts : str or Path, optional
        Write a CSV with columns ``COUNT_COLUMNS`` (frames 1-based, counts with 4
        decimals; frames with NaN pixels get empty counts).
    density_output : str or Path, optional
        Write the density maps to this ``.tif``/``.tiff`` (float32 stack) or
        ``.h5``/``.hdf5`` file (see :class:`DensityWriter`).
    box_size : int
        Side of the box of the maximum local count, pixels.
    batch_size, precision, tile_size
        See :func:`predict_stack`.
    check_envelope : bool
        Flag the frames outside the model's training envelope, when it records one.
    stack_options : dict, optional
        Passed to :class:`~defcon.tiffio.TiffStack`: ``series``, ``channel``,
        ``z``; ``allow_truncated=True`` counts the intact frames of a truncated
        file (the last gets the flag ``truncated``); ``nonfinite='flag'``
        leaves frames holding NaN or infinite pixels uncounted (flag
        ``nan_pixels``, NaN counts and density maps) instead of raising.
    progress : bool
        Show a progress bar (on a terminal only).
    overwrite : bool
        Replace existing output files that are not defcon outputs of the same kind.
    plot : bool, str or Path, optional
        Also write a PNG of the count and the maximum local count of every frame
        (:func:`defcon.plots.plot_counts`, the numbers of the CSV): a ``.png``
        path, or True for the path of ``counts`` with ``.png`` for its suffix.
        An existing PNG is replaced; another file only with ``overwrite``.
    on_chunk : callable, optional
        Called as ``on_chunk(frames_done, frames)`` after each chunk of frames
        (the napari widget's progress bar). An exception it raises stops the
        count, and no output is written.

    Returns
    -------
    StackCounts

    Raises
    ------
    MissingFileError, UnsupportedFileError
        The stack or the model file is missing or unreadable, or
        ``density_output`` has an unsupported suffix.
    ModelKindError
        ``model`` is not a density network.
    OverwriteError
        An output would replace an input, or a file defcon did not write.
    FrameIndexError
        ``index`` names a frame outside the stack.
    ParameterError
        ``plot=True`` without ``counts``.

    Examples
    --------
    >>> result = count_tiff(model, "stack.tif", counts="counts.csv")  # doctest: +SKIP
    >>> result.counts.mean(), result.max_local_counts.max()  # doctest: +SKIP
    """
    model_file = model if isinstance(model, (str, os.PathLike)) else None
    inputs = [input_file, model_file]
    if density_output is not None:
        check_density_output(density_output, inputs, overwrite=overwrite)
    if counts is not None:
        check_output(
            counts,
            [*inputs, density_output],
            same_kind=is_counts_csv,
            overwrite=overwrite,
            what="counts CSV",
        )
    plot = _plot_path(plot, counts)
    if plot is not None:
        from .plots import check_png_output

        check_png_output(
            plot,
            inputs,
            [counts, density_output],
            overwrite=overwrite,
            what="counts plot",
        )
    values, flags = [], []
    with (
        TiffStack(input_file, **(stack_options or {})) as stack,
        contextlib.ExitStack() as files,
    ):
        model = _density_network(model)  # after the stack: a bad stack fails at once
        frames = _frame_selection(index, len(stack), stack.path)
        writer = None
        if density_output is not None:
            writer = files.enter_context(
                DensityWriter(
                    density_output,
                    (len(frames),) + stack.shape[1:] + (1,),
                    source=stack.path,
                    model=model.name,
                    frame_index=frames,
                )
            )
        table = None
        if counts is not None:
            tmp = files.enter_context(atomic_path(counts))
            table = csv.writer(files.enter_context(open(tmp, "w", newline="", encoding="utf-8")))
            table.writerow(COUNT_COLUMNS)
        check = envelope_check_for(model, stack.shape[1:]) if check_envelope else None
        chunks = _checked_chunks(
            model,
            stack,
            frames,
            check,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
            tile_size=tile_size,
        )
        for chunk_frames, density, chunk_flags in files.enter_context(contextlib.closing(chunks)):
            if writer is not None:
                writer.write(density)
            skipped = nonfinite_mask(stack, chunk_frames)
            rows = count_rows(density, chunk_frames + 1, box_size)
            for (f, c, m), flag, skip in zip(rows, chunk_flags, skipped):
                flag = "nan_pixels" if skip else flag
                if stack.truncated and f == len(stack):
                    flag = "+".join(x for x in (flag, "truncated") if x)
                if table is not None:
                    table.writerow((f, "", "", flag) if skip else (f, f"{c:.4f}", f"{m:.4f}", flag))
                flags.append(flag)
            values += [(c, m) for _, c, m in rows]
            if on_chunk is not None:
                on_chunk(len(values), len(frames))
        if len(values) != len(frames):  # every frame asked for has a row
            holds = "the stack holds" if index is None else "the index selects"
            raise UnsupportedFileError(
                f"{stack.path}: {len(values)} frames counted but {holds} {len(frames)}"
            )
        values = np.array(values, np.float64).reshape(-1, 2)
        result = StackCounts(
            frames=frames,
            counts=values[:, 0],
            max_local_counts=values[:, 1],
            flags=tuple(flags),
            box_size=int(box_size),
            envelope_summary=check.summary() if check is not None else None,
            truncated=stack.truncated,
            counts_path=None if counts is None else Path(counts),
            density_path=None if density_output is None else Path(density_output),
            plot_path=plot,
        )
        if plot is not None:  # before the other outputs appear: a failed plot leaves none
            from .plots import plot_counts

            plot_counts(result, plot, title=stack.path.name)
    return result


def iter_predict_tiff(
    model,
    stack,
    index=None,
    batch_size=None,
    progress=False,
    *,
    precision=None,
    tile_size=None,
    envelope_check=None,
):
    """Yield densities of a TIFF stack chunk by chunk, in bounded memory.

    Parameters
    ----------
    model : FCN
    stack : str, Path or TiffStack
        A TiffStack opened with ``nonfinite='flag'`` has frames holding NaN or
        infinite pixels zeroed before the network; pass each chunk's densities
        through :func:`mark_nonfinite` to make them NaN.
    index, batch_size, progress, precision, tile_size
        See :func:`predict_tiff`.
    envelope_check : defcon.envelope.EnvelopeCheck, optional
        Sees every chunk of raw frames as it is read (in the reader thread);
        call its ``flags(frames, density)`` for each chunk yielded.

    Yields
    ------
    frames : ndarray of shape (k,), int
        0-based indices of the chunk's frames in the stack.
    density : ndarray of shape (k, H, W, 1), float32

    Examples
    --------
    >>> for frames, density in iter_predict_tiff(model, "stack.tif"):  # doctest: +SKIP
    ...     rows = count_rows(density, frames + 1)
    """
    own = not isinstance(stack, TiffStack)
    stack = TiffStack(stack) if own else stack
    try:
        frames = _frame_selection(index, len(stack), stack.path)
        runner = _Runner(model, precision, stack.shape[1:], batch_size, tile_size)
        batches = (
            (frames[a : a + runner.batch], _read_frames(stack, frames[a : a + runner.batch]))
            for a in range(0, len(frames), runner.batch)
        )
        if envelope_check is not None:
            batches = _observed(batches, envelope_check)
        with (
            progress_bar(
                total=len(frames), unit="frame", show=progress, desc=stack.path.name
            ) as bar,
            contextlib.closing(runner.run(batches)) as run,
        ):
            for chunk_frames, density in run:  # closed before the stack: the reader stops
                yield chunk_frames, density
                bar.update(len(chunk_frames))
    finally:
        if own:
            stack.close()


def _checked_chunks(model, stack, frames, check, **options):
    """:func:`iter_predict_tiff` with NaN and envelope flags: the one prediction loop.

    Yields ``(frames (k,), density (k, H, W, 1), flags (k,))``: densities are NaN
    for frames holding NaN or infinite pixels (:func:`mark_nonfinite`); flags are
    ``check.flags`` ('' for every frame when ``check`` is None).
    """
    chunks = iter_predict_tiff(model, stack, frames, envelope_check=check, **options)
    with contextlib.closing(chunks):
        for chunk_frames, density in chunks:
            density = mark_nonfinite(stack, chunk_frames, density)
            flags = (
                [""] * len(chunk_frames) if check is None else check.flags(chunk_frames, density)
            )
            yield chunk_frames, density, flags


def _plot_path(plot, counts):
    """The counts plot's path for ``count_tiff(plot=...)``, or None for no plot."""
    if plot is None or plot is False:
        return None
    if plot is True:
        if counts is None:
            raise ParameterError("plot=True puts the plot beside the counts CSV: give counts too")
        from .plots import counts_plot_path

        return counts_plot_path(counts)
    return Path(plot)


def _density_network(model):
    """The density network of ``model``: an FCN, or a model file loaded here.

    Raises
    ------
    ModelKindError
        A segmentation or max-count network.
    """
    from .networks import FCN

    if isinstance(model, (str, os.PathLike)):
        name, model = model, FCN.from_file(model)
    else:
        name = f"model '{model.name}'"
    if model.output_kind not in ("density", "both"):
        raise ModelKindError(
            f"{name}: a '{model.output_kind}' model; counting needs a density model"
        )
    return model.with_output("density") if model.output_kind == "both" else model


def _log_problems(input_file, envelope_summary, n_nonfinite):
    """Log frames outside the envelope and frames holding NaN pixels, if any."""
    if envelope_summary:
        log.warning("%s: %s", Path(input_file).name, envelope_summary)
    if n_nonfinite:
        log.warning(
            "%s: %d frame(s) hold NaN or infinite pixels: their densities are NaN",
            Path(input_file).name,
            n_nonfinite,
        )


def _warn_deprecated(message):
    """Warn with a DeprecationWarning pointing at the first caller outside defcon."""
    frame, level = sys._getframe(2), 3  # the caller of the deprecated function
    while frame is not None and frame.f_globals.get("__name__", "").startswith("defcon."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def mark_nonfinite(stack, frames, density):
    """Set the densities of frames that hold NaN or infinite pixels to NaN.

    Parameters
    ----------
    stack : TiffStack
        Opened with ``nonfinite='flag'``; its ``nonfinite_frames`` are marked.
    frames : ndarray of shape (k,), int
        0-based frames of the chunk.
    density : ndarray of shape (k, H, W, 1)

    Returns
    -------
    ndarray of shape (k, H, W, 1)
        ``density``, with NaN for those frames.
    """
    bad = nonfinite_mask(stack, frames)
    if bad.any():
        density = np.array(density, copy=True)
        density[bad] = np.nan
    return density


def nonfinite_mask(stack, frames):
    """Boolean mask, shape (k,), of ``frames`` that hold NaN or infinite pixels."""
    return np.array([int(f) in stack.nonfinite_frames for f in frames], bool)


def _observed(batches, envelope_check):
    for key, frames in batches:
        envelope_check.observe(key, frames)
        yield key, frames


def envelope_check_for(model, frame_shape):
    """An :class:`~defcon.envelope.EnvelopeCheck` for the model's envelope, or None."""
    from .envelope import EnvelopeCheck

    envelope = getattr(model, "envelope", None)
    return None if envelope is None else EnvelopeCheck(envelope, frame_shape)


def local_count_map(density, box_size=7):
    """Emitter count in every ``box_size`` x ``box_size`` box ('valid' positions).

    Parameters
    ----------
    density : ndarray of shape (H, W), (N, H, W) or (N, H, W, 1)
    box_size : int

    Returns
    -------
    ndarray of shape (N, H - box_size + 1, W - box_size + 1), float64
        Or (H - box_size + 1, W - box_size + 1) for a 2-D input.

    Raises
    ------
    ShapeMismatchError
        A frame is smaller than the box.
    """
    d = np.asarray(density)
    two_d = d.ndim == 2
    d = _as_frames(d, "density")
    b = int(box_size)
    n, h, w = d.shape
    if b < 1 or h < b or w < b:
        raise ShapeMismatchError(
            f"density frames of {h} x {w} pixels are smaller than the "
            f"{b} x {b} box (box_size must be 1 to {min(h, w)})"
        )
    # Summed-area table in float64: every box sum is exact to ~1e-12 relative.
    sat = np.zeros((n, h + 1, w + 1), np.float64)
    np.cumsum(d, axis=1, dtype=np.float64, out=sat[:, 1:, 1:])
    np.cumsum(sat[:, 1:, 1:], axis=2, out=sat[:, 1:, 1:])
    boxes = sat[:, b:, b:] - sat[:, :-b, b:] - sat[:, b:, :-b] + sat[:, :-b, :-b]
    return boxes[0] if two_d else boxes


def max_local_count(density, box_size=7):
    """Maximum over each frame of :func:`local_count_map`, shape (N,), float64."""
    boxes = local_count_map(density, box_size)
    return boxes.max(axis=(-2, -1)).reshape(-1)


def count_rows(density, frames, box_size=7):
    """Rows ``(frame, count, max_local_count)`` for a chunk of density maps.

    Parameters
    ----------
    density : ndarray of shape (k, H, W, 1) or (k, H, W)
    frames : array_like of int, shape (k,)
        Frame numbers to write (1-based for CSVs: pass ``indices + 1``).
    box_size : int

    Returns
    -------
    list of tuple (int, float, float)
        One row per frame: the first three ``COUNT_COLUMNS`` (the CLI adds ``flag``).
    """
    d = _as_frames(density, "density")
    counts = d.sum(axis=(1, 2), dtype=np.float64)
    local = max_local_count(d, box_size)
    return [(int(f), float(c), float(m)) for f, c, m in zip(frames, counts, local)]


def receptive_margin():
    """Input pixels each side that a DEFCoN output pixel depends on, rounded up to 4.

    Propagates the dependency interval of an output pixel back through every
    layer (TensorFlow 'same' padding), for the four pixel phases of the stride-4
    grid; tiles overlapping by this margin give the untiled result.
    """
    from . import models

    steps = [
        (kind, k, s)
        for _, kind, _, k, s in models.SEG_LAYERS
        + (("seg", "conv", 1, 1, 1),)
        + models.DENSITY_LAYERS
        + (("density", "conv", 1, 1, 1),)
        if kind != "dropout"
    ]
    radius = 0
    for phase in range(SIDE_MULTIPLE):
        lo = hi = phase
        for kind, k, s in reversed(steps):
            before = (k - 1) // 2 if s == 1 else max(k - s, 0) // 2
            if kind == "conv":
                lo, hi = s * lo - before, s * hi - before + k - 1
            else:
                lo, hi = math.ceil((lo + before - k + 1) / s), (hi + before) // s
        radius = max(radius, phase - lo, hi - phase)
    return padded_side(radius)


def check_density_output(path, inputs, overwrite=False):
    """Refuse a density output of an unknown type, or one that would replace a file.

    Parameters
    ----------
    path : str or Path
        The ``.tif``/``.tiff``/``.h5``/``.hdf5`` file about to be written.
    inputs : iterable of str or Path
        The command's inputs (see :func:`defcon.files.check_output`).
    overwrite : bool
        Replace an existing file that is not a defcon density output.

    Raises
    ------
    UnsupportedFileError
        Another suffix (``.png``, ``.npy``, ...): nothing would read it as density maps.
    OverwriteError
    """
    if Path(path).suffix.lower() not in OUTPUT_SUFFIXES:
        raise UnsupportedFileError(
            f"{path}: density maps are written as {', '.join(OUTPUT_SUFFIXES)}; "
            "choose one of these suffixes"
        )
    check_output(
        path, inputs, same_kind=is_density_output, overwrite=overwrite, what="density output"
    )


class DensityWriter:
    """Context manager writing density frames to a ``.tif`` or ``.h5`` file atomically.

    ``.tif``/``.tiff``: a float32 stack of (H, W) pages (BigTIFF above 4 GB);
    ``.h5``/``.hdf5``: dataset ``density`` of ``shape``, one frame per chunk, with
    attributes ``source_file``, ``model``, ``defcon_version``, and dataset
    ``frame_index`` (0-based source frames). The file appears at ``path`` only
    when all ``shape[0]`` frames were written and the block exits normally.

    Parameters
    ----------
    path : str or Path
    shape : tuple of int
        ``(N, H, W, 1)``.
    source, model : str
        Provenance.
    frame_index : array_like of int, optional
    """

    def __init__(self, path, shape, source="", model="", frame_index=None):
        from . import __version__

        self.path, self.shape, self.frame_index = Path(path), tuple(shape), frame_index
        self.attrs = {
            "source_file": str(source),
            "model": str(model),
            "defcon_version": __version__,
        }
        self._written = 0

    def __enter__(self):
        what = f"{self.shape[0]} density maps of {self.shape[1]} x {self.shape[2]}"
        size = 4 * int(np.prod(self.shape)) + 64 * self.shape[0] + (1 << 20)
        # Before any file exists: even creating an HDF5 file must not meet a full disk.
        check_free_space(self.path, size, what)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path))
            if self.path.suffix.lower() in (".h5", ".hdf5"):
                import h5py

                self._file = stack.enter_context(h5py.File(tmp, "w"))
                stack.enter_context(hdf5_space(self._file, size, what, reported_as=self.path))
                self._data = self._file.create_dataset(
                    "density", self.shape, np.float32, chunks=(1,) + self.shape[1:]
                )
                self._data.attrs.update(self.attrs)
                if self.frame_index is not None:
                    self._file["frame_index"] = np.asarray(self.frame_index)
            else:
                import tifffile

                big = np.prod(self.shape) * 4 > 2**32 - 2**25
                self._file = stack.enter_context(tifffile.TiffWriter(tmp, bigtiff=big))
                self._data = None
            self._stack = stack.pop_all()
        return self

    def write(self, density):
        """Append frames, ndarray of shape (k, H, W, 1)."""
        k = len(density)
        if self._written + k > self.shape[0]:
            raise ShapeMismatchError(f"{self.path}: more than the {self.shape[0]} frames declared")
        if self._data is not None:
            self._data[self._written : self._written + k] = density
        else:
            for frame in density:
                self._file.write(
                    frame[..., 0], contiguous=True, photometric="minisblack", metadata=self.attrs
                )
        self._written += k

    def __exit__(self, *exc):
        if exc[0] is None and self._written != self.shape[0]:
            try:
                raise ShapeMismatchError(
                    f"{self.path}: {self._written} frames written, {self.shape[0]} declared"
                )
            except ShapeMismatchError:
                exc = sys.exc_info()
        return self._stack.__exit__(*exc)


def is_density_output(path):
    """True if ``path`` is a density ``.tif``/``.h5`` written by :class:`DensityWriter`."""
    try:
        if Path(path).suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                return "density" in f and "defcon_version" in f["density"].attrs
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return any("defcon_version" in m for m in tif.shaped_metadata or ())
    except (OSError, ValueError):  # unreadable: not a defcon output
        return False


def is_counts_csv(path):
    """True if ``path`` is a counts CSV written by ``defcon predict``."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith("frame,count,max_local_count")
    except (OSError, UnicodeDecodeError):
        return False


# ----------------------------------------------------------------- internals
def _as_frames(stack, what="stack"):
    a = np.asarray(stack)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    elif a.ndim == 2:
        a = a[np.newaxis]
    if a.ndim != 3 or 0 in a.shape or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ShapeMismatchError(
            f"{what}: got an array of shape {np.shape(stack)} and dtype "
            f"{a.dtype}; expected real (H, W), (N, H, W) or (N, H, W, 1)"
        )
    return a


def _frame_selection(index, n, path):
    if index is None:
        return np.arange(n)
    if isinstance(index, slice):
        return np.arange(n)[index]
    frames = np.atleast_1d(np.asarray(index))
    if frames.ndim != 1 or not np.issubdtype(frames.dtype, np.integer):
        raise FrameIndexError(
            f"{path}: index must be None, an int, a slice or a sequence of ints, got {index!r}"
        )
    bad = frames[(frames < -n) | (frames >= n)]
    if bad.size:
        raise FrameIndexError(
            f"{path}: frame index {int(bad[0])} outside the stack's {n} "
            f"frames (0-based: 0 to {n - 1})"
        )
    return np.where(frames < 0, frames + n, frames)


def _read_frames(stack, frames):
    """Read frames (in any order) as stored: one read if they are consecutive.

    Frames holding NaN or infinite pixels (``nonfinite='flag'``) are zeroed, so
    they do not reach the network or the envelope check.
    """
    if len(frames) and np.all(np.diff(frames) == 1):
        out = stack.read(int(frames[0]), int(frames[-1]) + 1)
    else:
        out = np.stack([stack.read(int(f), int(f) + 1)[0] for f in frames])
    bad = nonfinite_mask(stack, frames) if stack.nonfinite_frames else None
    if bad is not None and bad.any():
        out[bad] = 0
    return out


def _positions(chunks):
    start = 0
    for chunk in chunks:
        yield slice(start, start + len(chunk[0])), chunk
        start += len(chunk[0])


def _prefetch(items, depth):
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead."""
    q, stop, done = queue.Queue(depth), threading.Event(), object()

    def put(item):
        while not stop.is_set():
            try:
                return q.put(item, timeout=0.1)
            except queue.Full:
                pass

    def work():
        try:
            for item in items:
                put(item)
                if stop.is_set():
                    return
            put(done)
        except BaseException as err:  # re-raised in the consuming thread
            put(err)

    thread = threading.Thread(target=work, name="defcon-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _pad(frames, height, width):
    """Float32 (k, height, width, 1) frames from (k, h, w), last row and column repeated."""
    k, h, w = frames.shape
    if (h, w) == (height, width) and frames.dtype == np.float32:
        return np.ascontiguousarray(frames)[..., np.newaxis]
    out = np.empty((k, height, width, 1), np.float32)
    out[:, :h, :w, 0] = frames
    out[:, :h, w:, 0] = out[:, :h, w - 1 : w, 0]
    out[:, h:, :, 0] = out[:, h - 1 : h, :, 0]
    return out


class _Runner:
    """Batching, padding, tiling and the reader thread around one network."""

    def __init__(self, model, precision, frame_shape, batch_size, tile_size):
        self.net = compiled_network(model, precision or DEFAULT_PRECISION)
        self.h, self.w = frame_shape
        self.hp, self.wp = (padded_side(n) for n in frame_shape)
        if tile_size is None and self.hp * self.wp > TILE_PIXELS and self.net.tileable:
            tile_size = TILE_SIZE
        if tile_size is not None and (
            int(tile_size) < SIDE_MULTIPLE or int(tile_size) % SIDE_MULTIPLE
        ):
            raise ParameterError(
                f"tile_size must be a positive multiple of {SIDE_MULTIPLE}, got {tile_size}"
            )
        self.tile = None if tile_size is None else int(tile_size)
        batch_pixels = int(BATCH_PIXELS[self.net.precision] * self.net.batch_share)
        auto = max(1, batch_pixels // (self.hp * self.wp))
        self.batch = 1 if self.tile else (auto if batch_size is None else int(batch_size))
        if self.batch < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")

    def run(self, batches):
        """Yield ``(key, density (k, h, w, 1))`` for each ``(key, frames (k, h, w))``."""
        prepared = ((key, _pad(frames, self.hp, self.wp)) for key, frames in batches)
        with contextlib.closing(_prefetch(prepared, READ_AHEAD)) as items:
            for key, x in items:
                density = self._tiled(x) if self.tile else self.net(x, normalize=True)
                yield key, density[:, : self.h, : self.w]

    def _tiled(self, x):
        # HistNorm over the whole frame first: tiles must share one min and max.
        lo = x.min(axis=(1, 2, 3), keepdims=True)
        span = x.max(axis=(1, 2, 3), keepdims=True) - lo
        x = (x - lo) / np.where(span > 0, span, np.float32(1))
        out, m = np.empty_like(x), receptive_margin()
        for r0, r1, ra, rb in _spans(self.hp, self.tile, m):
            for c0, c1, ca, cb in _spans(self.wp, self.tile, m):
                y = self.net(x[:, r0:r1, c0:c1], normalize=False)
                out[:, r0 + ra : r0 + rb, c0 + ca : c0 + cb] = y[:, ra:rb, ca:cb]
        return out


def _spans(length, core, margin):
    """Tiles ``(start, stop, keep_start, keep_stop)`` along one padded axis."""
    for a in range(0, length, core):
        b = min(a + core, length)
        lo, hi = max(a - margin, 0), min(b + margin, length)
        yield lo, hi, a - lo, b - lo
