"""Frame-logger ground truth: reading, validation, density and segmentation maps.

A frame-logger CSV (as written by the SASS simulator) lists one emitter per line
with the header ``frame,id,x,y,z,brightness``. Frames are 1-based; ``x`` is the
column and ``y`` the row, in pixels, with the origin at the top-left corner of
the top-left pixel, so pixel (row r, column c) covers [c, c+1) x [r, r+1).

Localization tables of ThunderSTORM, Picasso and DECODE are converted to this
form as they are read (:mod:`defcon.localizations`). A table is parsed and
checked in chunks; :func:`read_emitters` keeps only what the maps need (16 bytes
per emitter), so large frame loggers fit in memory.

Density maps put a 2-D Gaussian on every emitter brighter than a threshold.
Each emitter only touches a window of about +-5 sigma around itself, so the
cost per emitter does not depend on the frame size.
"""

import logging
import operator
import os
import warnings

import numpy as np
import pandas as pd
from scipy.special import erf

from .errors import GroundTruthError, GroundTruthWarning
from .localizations import FRAME_LOGGER, Localizations

__all__ = [
    "read_ground_truth",
    "read_emitters",
    "Emitters",
    "density_stack",
    "segmentation_stack",
    "count_per_frame",
]

logger = logging.getLogger(__name__)

KERNELS = ("integrated", "sampled")
# Kernel support: +-_TRUNCATE sigma around the emitter. Beyond 5 sigma a 1-D
# Gaussian holds < 3e-7 of its mass per side, so a map differs from the untruncated
# one by < 1.2e-6 in total and < 2e-7 per pixel at sigma = 1.
_TRUNCATE = 5.0
# Entries (emitter x window pixel) scattered per block: small enough for the index
# and values (0.5 MB) to stay in cache; 1.5-2x faster than blocks of 2**21 or more.
_BLOCK_ENTRIES = 1 << 16
# Rows of a CSV parsed and checked at once: about 20 MB of parser buffers, pandas columns
# and checks (300 bytes per row); larger chunks cost memory and are no faster.
_CHUNK_ROWS = 1 << 16


# --------------------------------------------------------------------------- reading
def read_ground_truth(ground_truth, n_frames=None, height=None, width=None):
    """Read and validate a frame-logger CSV or DataFrame.

    Parameters
    ----------
    ground_truth : str, Path, pandas.DataFrame or Localizations
        A frame-logger CSV (header ``frame,id,x,y,z,brightness``; extra columns
        are allowed and kept) or a DataFrame with at least the columns
        ``frame``, ``x``, ``y`` and ``brightness``; frames are 1-based. A path
        in another format (ThunderSTORM, Picasso, DECODE) is recognised and
        converted; pass a :class:`~defcon.localizations.Localizations` to force
        the format or give a pixel size.
    n_frames : int, optional
        Number of frames in the stack; frames beyond it are an error.
    height, width : int, optional
        Frame size in pixels. Emitters whose centre lies outside
        [0, width) x [0, height) are dropped with a :class:`GroundTruthWarning`.

    Returns
    -------
    pandas.DataFrame
        One row per emitter, with ``frame`` as int64 (1-based) and ``x``, ``y``,
        ``brightness`` as float64; other columns (``id``, ``z``, ...) unchanged.
        The index is a fresh RangeIndex.

    Raises
    ------
    MissingFileError
        If the file does not exist.
    UnsupportedFileError
        If the path is a folder or the file cannot be parsed as CSV.
    GroundTruthError
        If a required column is missing, a value is non-numeric, NaN or infinite,
        or a frame is not a whole number, below 1 or beyond ``n_frames``. The
        message names the file (or "DataFrame"), the column and the first bad
        line (or index label).

    Notes
    -----
    A CSV is parsed and checked ``_CHUNK_ROWS`` lines at a time, but the result
    holds every row and column (about 50 bytes per emitter): for large files use
    :func:`read_emitters`, which keeps 16 bytes per emitter.

    Examples
    --------
    >>> import pandas as pd
    >>> gt = pd.DataFrame({"frame": [1, 2], "x": [3.5, 4.0], "y": [1.5, 2.0],
    ...                    "brightness": [1000.0, 800.0]})
    >>> read_ground_truth(gt, n_frames=2, height=8, width=8)["frame"].tolist()
    [1, 2]
    """
    parts = []
    source = _source(ground_truth)
    renamed = {column: name for name, column in _layout(source).columns.items()}
    for _, table, columns, inside in _validated_chunks(
        source, n_frames, height, width, stacklevel=3
    ):
        # Build each part from arrays once: assigning columns one by one into a copy
        # made pandas consolidate blocks repeatedly (seconds for millions of rows).
        data = {renamed.get(name, name): table[name].array for name in table.columns}
        data.update(columns)
        if not inside.all():
            data = {name: values[inside] for name, values in data.items()}
        parts.append(pd.DataFrame(data))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


class Emitters:
    """Validated emitters of one stack in compact arrays, sorted by frame.

    Made by :func:`read_emitters`; pass it to :func:`density_stack` or
    :func:`count_per_frame` in place of the CSV so that the CSV is read once.

    Attributes
    ----------
    label : str
        The CSV (or "DataFrame") the emitters were read from, for messages.
    n_frames : int
    height, width : int or None
        The stack the emitters were checked against.
    brightness_threshold : float or None
        Only emitters with ``brightness > brightness_threshold`` were kept.
    starts : ndarray of int64, shape (n_frames + 1,)
        The emitters of 0-based frame ``f`` are rows ``starts[f]:starts[f + 1]``.
    x, y : ndarray of float64, shape (N,)
        Positions in pixels (``x`` = column, ``y`` = row), in frame order and,
        within a frame, in the order of the input.
    brightest : float or None
        Largest brightness among the emitters inside the frame, before the
        threshold; None if there is none.
    """

    def __init__(
        self, label, n_frames, height, width, brightness_threshold, starts, x, y, brightest
    ):
        self.label, self.n_frames, self.height, self.width = label, n_frames, height, width
        self.brightness_threshold, self.brightest = brightness_threshold, brightest
        self.starts, self.x, self.y = starts, x, y

    def __len__(self):
        return int(self.starts[-1])

    def __repr__(self):
        return (
            f"<Emitters {len(self)} from {self.label} for {self.n_frames} frames of "
            f"{self.width} x {self.height}, brightness > {self.brightness_threshold}>"
        )

    def _check(self, n_frames, height, width, brightness_threshold):
        used = (n_frames, height, width, brightness_threshold)
        read = (self.n_frames, self.height, self.width, self.brightness_threshold)
        if used != read:
            raise GroundTruthError(
                f"{self.label}: emitters read for (n_frames, height, width, "
                f"brightness_threshold) = {read} cannot be used for {used}; read them again"
            )


def read_emitters(ground_truth, n_frames, height=None, width=None, brightness_threshold=250):
    """Read and validate a frame logger into compact arrays, a CSV in chunks.

    Checks everything :func:`read_ground_truth` checks, with the same errors
    and warnings, but keeps only the positions of the emitters inside the frame
    and brighter than the threshold, sorted by frame: 16 bytes per emitter plus
    a chunk of the CSV (a 1 GB SASS frame logger, about 25 million emitters,
    needs about 400 MB).

    Parameters
    ----------
    ground_truth : str, Path, pandas.DataFrame or Localizations
        Frame-logger CSV or DataFrame, or another table (see :func:`read_ground_truth`).
    n_frames : int
        Number of frames in the stack.
    height, width : int, optional
        Frame size in pixels; emitters outside it are dropped with a warning.
    brightness_threshold : float or None
        Keep emitters with ``brightness > brightness_threshold`` (compared at
        full precision); None keeps all. Pass the same threshold (default 250,
        as theirs) to :func:`density_stack` and :func:`count_per_frame`.

    Returns
    -------
    Emitters

    Raises
    ------
    MissingFileError, UnsupportedFileError, GroundTruthError
        As :func:`read_ground_truth`.

    Notes
    -----
    Frame loggers are usually in frame order. Emitters out of frame order are
    sorted (stably) at the end, which needs about 20 more bytes per emitter.

    Examples
    --------
    >>> import pandas as pd
    >>> gt = pd.DataFrame({"frame": [2, 1, 2], "x": [3.5, 4.0, 1.0], "y": [1.5, 2.0, 6.0],
    ...                    "brightness": [1000.0, 100.0, 800.0]})
    >>> emitters = read_emitters(gt, n_frames=2, height=8, width=8, brightness_threshold=250)
    >>> len(emitters), emitters.starts.tolist(), emitters.x.tolist()
    (2, [0, 0, 2], [3.5, 1.0])
    """
    return _read_compact(
        ground_truth, n_frames, height, width, brightness_threshold, positions=True, stacklevel=3
    )


def _as_emitters(ground_truth, n_frames, height, width, threshold, positions, stacklevel):
    """``ground_truth`` as :class:`Emitters`, checked against the stack if it is one already."""
    if isinstance(ground_truth, Emitters):
        ground_truth._check(n_frames, height, width, threshold)
        return ground_truth
    return _read_compact(
        ground_truth, n_frames, height, width, threshold, positions, stacklevel + 1
    )


def _read_compact(
    ground_truth, n_frames, height, width, brightness_threshold, positions, stacklevel
):
    """:class:`Emitters` from a CSV or DataFrame; without ``positions``, x and y are None.

    ``x`` and ``y`` are allocated for every line of the CSV at once: only the
    pages written are resident, so a bound costs no memory and nothing is copied.
    """
    n_frames = _positive_int(n_frames, "n_frames")
    threshold = _threshold(brightness_threshold)
    ground_truth = _source(ground_truth)  # detect a file's format once
    counts = np.zeros(n_frames, dtype=np.int64)
    x = y = frames = None  # 0-based frames per emitter, only once they are out of order
    n, last, brightest = 0, 0, -np.inf
    for label, _table, columns, inside in _validated_chunks(  # noqa: B007 - label used below
        ground_truth, n_frames, height, width, stacklevel + 1
    ):
        if inside.any():
            brightest = max(brightest, float(columns["brightness"][inside].max()))
        keep = inside & _bright(columns, threshold)
        chunk_frames = columns["frame"][keep] - 1
        if positions:
            k = len(chunk_frames)
            if x is None:
                capacity = _max_rows(ground_truth)
                x, y = np.empty(capacity), np.empty(capacity)
            if (
                frames is None
                and k
                and (chunk_frames[0] < last or np.any(chunk_frames[1:] < chunk_frames[:-1]))
            ):
                frames = np.empty(len(x), dtype=np.int32)
                frames[:n] = np.repeat(np.arange(n_frames, dtype=np.int32), counts)
            if frames is not None:
                frames[n : n + k] = chunk_frames
            x[n : n + k], y[n : n + k] = columns["x"][keep], columns["y"][keep]
            n, last = n + k, chunk_frames[-1] if k else last
        counts += np.bincount(chunk_frames, minlength=n_frames)
    if positions:
        x, y = x[:n], y[:n]
        if frames is not None:
            order = np.argsort(frames[:n], kind="stable")
            del frames
            x[:] = x[order]
            y[:] = y[order]
    starts = np.concatenate([[0], np.cumsum(counts)])
    return Emitters(
        label,
        n_frames,
        height,
        width,
        threshold,
        starts,
        x,
        y,
        brightest if np.isfinite(brightest) else None,
    )


def _max_rows(source):
    """An upper bound on the rows of a DataFrame or :class:`Localizations`."""
    return len(source) if isinstance(source, pd.DataFrame) else source.max_rows()


def _source(ground_truth):
    """``ground_truth`` as a DataFrame or :class:`Localizations` (a path's format detected)."""
    if isinstance(ground_truth, (pd.DataFrame, Localizations)):
        return ground_truth
    if not isinstance(ground_truth, (str, os.PathLike)):
        kind = type(ground_truth).__name__
        raise TypeError(f"ground_truth must be a path or a DataFrame, not {kind}")
    return Localizations(ground_truth)


def _layout(source):
    return FRAME_LOGGER if isinstance(source, pd.DataFrame) else source.layout


def _validated_chunks(ground_truth, n_frames, height, width, stacklevel):
    """Yield ``(label, table, columns, inside)`` for each chunk of the ground truth.

    ``table`` is the chunk as loaded; ``columns`` maps each required column to its
    validated array of shape (N,) (``frame`` int64, the rest float64); ``inside`` is
    the bool mask of shape (N,) of the emitters inside the frame. After the last
    chunk, raise if most emitters of all chunks lie outside the frame, else warn
    about those dropped (``stacklevel`` counts from this generator).
    """
    n_frames = _positive_int(n_frames, "n_frames", optional=True)
    height = _positive_int(height, "height", optional=True)
    width = _positive_int(width, "width", optional=True)
    source = _source(ground_truth)
    layout = _layout(source)
    outside = _Outside(height, width)
    for table, label, where in _chunks(source):
        columns = {
            name: _numeric_column(table[column], column, label, where)
            for name, column in layout.columns.items()
        }
        _check_frames(columns["frame"], table.index, n_frames, label, where, layout)
        columns["frame"] = columns["frame"].astype(np.int64) + (1 - layout.first_frame)
        columns["x"] = layout.to_pixels(columns["x"], "x")
        columns["y"] = layout.to_pixels(columns["y"], "y")
        yield label, table, columns, outside.add(columns["x"], columns["y"])
    outside.finish(label, layout, stacklevel + 1)
    logger.debug(
        "%s: %d emitters, %d inside the frame", label, outside.total, outside.total - outside.out
    )


def _chunks(source):
    """Yield ``(table, label, where)``: a DataFrame or :class:`Localizations` in chunks.

    A DataFrame is one chunk; a table on disk is read ``_CHUNK_ROWS`` rows at a time
    and yields at least one chunk (empty for a header alone), without blank lines.
    ``where(index label)`` names a row's line, row or index.
    """
    layout = _layout(source)
    if isinstance(source, pd.DataFrame):
        _check_columns(source.columns, "DataFrame", layout)
        yield source, "DataFrame", lambda index: f"index {index!r}"
        return
    for table, where in source.chunks(_CHUNK_ROWS):
        _check_columns(table.columns, source.label, layout)
        yield table, source.label, where


def _check_columns(columns, label, layout):
    missing = ", ".join(repr(name) for name in layout.columns.values() if name not in columns)
    if missing:
        found = ", ".join(map(str, columns)) or "none"
        raise GroundTruthError(
            f"{label}: missing column(s) {missing} (found: {found}); {layout.hint}"
        )


def _numeric_column(column, name, label, where):
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raw = column.iloc[first]
        what = "no value" if pd.isna(raw) else f"the value {raw!r}"
        where_ = where(column.index[first])
        raise GroundTruthError(
            f"{label}: column {name!r} has {what} at {where_}; expected a finite number"
        )
    return values


def _check_frames(frames, index, n_frames, label, where, layout):
    first = layout.first_frame
    limit = n_frames - 1 + first if n_frames is not None else 2**53
    too_big = f"is beyond the stack of {n_frames} frames" if n_frames else "is too large"
    if n_frames and first != 1:
        too_big += f" (frames {first}-based in {layout.format} tables)"
    checks = (
        (frames != np.floor(frames), "is not a whole number; frame numbers are integers"),
        (frames < first, f"is below {first}; frame numbers are {first}-based"),
        (frames > limit, too_big),
    )
    for bad, problem in checks:
        if bad.any():
            first = int(np.argmax(bad))
            where_ = where(index[first])
            raise GroundTruthError(
                f"{label}: column 'frame' at {where_}: frame {frames[first]:g} {problem}"
            )


class _Outside:
    """Emitters outside [0, width) x [0, height), counted over all chunks."""

    def __init__(self, height, width):
        self.height, self.width = height, width
        self.total = self.out = self.swapped = 0  # swapped: inside once x and y are swapped
        self.x_max = self.y_max = -np.inf

    def add(self, x, y):
        """Count emitters at ``x``, ``y`` of shape (N,); return the bool mask of those inside."""
        inside = np.ones(len(x), dtype=bool)
        if self.width is not None:
            inside &= (x >= 0) & (x < self.width)
        if self.height is not None:
            inside &= (y >= 0) & (y < self.height)
        if self.width and self.height and len(x):
            self.swapped += int(
                np.count_nonzero((y >= 0) & (y < self.width) & (x >= 0) & (x < self.height))
            )
            self.x_max, self.y_max = max(self.x_max, x.max()), max(self.y_max, y.max())
        self.total += len(x)
        self.out += len(x) - int(np.count_nonzero(inside))
        return inside

    def finish(self, label, layout, stacklevel):
        """Raise if most emitters lie outside the frame, else warn about those dropped."""
        out, total = self.out, self.total
        if out > 0.5 * total and out >= 3:
            raise GroundTruthError(
                f"{label}: {out} of {total} emitters lie outside the "
                f"{self.width} x {self.height} frame; {self._likely_cause(layout)}"
            )
        if out:
            bounds = [
                f"0 <= {axis} < {size}"
                for axis, size in (("x", self.width), ("y", self.height))
                if size
            ]
            warnings.warn(
                f"{label}: dropped {out} of {total} emitters whose centre lies outside "
                f"the frame ({', '.join(bounds)})",
                GroundTruthWarning,
                stacklevel=stacklevel,
            )

    def _likely_cause(self, layout):
        """A guess at why positions miss the frame, for the error message."""
        x, y = layout.columns["x"], layout.columns["y"]
        if self.width and self.height and self.swapped > 0.9 * self.total:
            return f"x and y look swapped ({x!r} is the column, {y!r} the row)"
        if layout.pixel_size_nm is not None:
            size = " x ".join(f"{s:g}" for s in sorted(set(layout.pixel_size_nm)))
            return (
                f"{x!r} and {y!r} are in nm and were divided by a pixel size of {size} nm: "
                "check --pixel-size (pixel_size_nm) and that the table belongs to this stack"
            )
        if (
            self.width
            and self.height
            and (self.x_max > 10 * self.width or self.y_max > 10 * self.height)
        ):
            if layout is FRAME_LOGGER:
                return (
                    "positions look like nanometres: frame loggers give x and y in pixels "
                    "(divide by the pixel size in nm)"
                )
            return (
                f"positions look like nanometres, but {layout.format} {x!r} and {y!r} are "
                "read as pixels: check --format"
            )
        return f"check that {x!r} and {y!r} are in pixels of this stack (x = column, y = row)"


# --------------------------------------------------------------------------- maps
def density_stack(
    ground_truth,
    n_frames,
    height,
    width,
    sigma=1.0,
    brightness_threshold=250,
    kernel="integrated",
    frame_range=None,
):
    """Density maps: one Gaussian of unit mass per emitter brighter than a threshold.

    Parameters
    ----------
    ground_truth : str, Path, pandas.DataFrame or Emitters
        Frame-logger CSV or DataFrame, validated as in :func:`read_ground_truth`
        (emitters outside the frame are dropped with a warning), or
        :class:`Emitters` read for the same stack and ``brightness_threshold``.
    n_frames, height, width : int
        Size of the stack the ground truth belongs to.
    sigma : float
        Standard deviation of the Gaussian, in pixels.
    brightness_threshold : float or None
        Only emitters with ``brightness > brightness_threshold`` (strictly, as in
        DEFCoN) are drawn; None draws every emitter.
    kernel : {"integrated", "sampled"}
        ``"integrated"``: the Gaussian integrated over each pixel's area, so an
        emitter well inside the frame adds 1 to the frame's sum and the sum of a
        map is a count. ``"sampled"``: DEFCoN's original target, the normalised
        2-D Gaussian pdf sampled at pixel centres (c + 0.5, r + 0.5), not
        renormalised (DEFCoN passed ``sigma`` as the variance; the two agree at
        the default sigma = 1).
    frame_range : tuple of int, optional
        ``(start, stop)``: the 0-based, half-open range of frames to produce, to
        stream a long stack in chunks. Default: all ``n_frames``.

    Returns
    -------
    ndarray of float32, shape (stop - start, height, width)
        Mass that falls outside the frame is lost. The Gaussian is truncated at
        5 sigma (less than 1.2e-6 of its mass).

    Raises
    ------
    GroundTruthError
        For invalid ground truth (see :func:`read_ground_truth`) or parameters,
        or :class:`Emitters` read for another stack or threshold.

    Notes
    -----
    Each emitter costs the same whatever the frame size (a window of 11 x 11
    pixels at sigma = 1). To stream a long stack, read the CSV once with
    :func:`read_emitters` and pass the :class:`Emitters` with successive
    ``frame_range`` chunks: each call then only slices the frames it draws.
    A CSV or DataFrame is read and checked again on every call.

    Examples
    --------
    >>> import pandas as pd
    >>> gt = pd.DataFrame({"frame": [1], "x": [30.5], "y": [5.5], "brightness": [1e3]})
    >>> d = density_stack(gt, n_frames=1, height=24, width=40)
    >>> d.shape, [int(i) for i in np.unravel_index(d[0].argmax(), d[0].shape)]
    ((1, 24, 40), [5, 30])
    >>> round(float(d.sum()), 4)
    1.0
    """
    n_frames = _positive_int(n_frames, "n_frames")
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    threshold = _threshold(brightness_threshold)
    if _finite(sigma, "sigma") <= 0:
        raise GroundTruthError(f"sigma must be positive, got {sigma!r}")
    if kernel not in KERNELS:
        raise GroundTruthError(f"kernel must be 'integrated' or 'sampled', got {kernel!r}")
    start, stop = _frame_range(frame_range, n_frames)
    emitters = _as_emitters(
        ground_truth, n_frames, height, width, threshold, positions=True, stacklevel=3
    )

    rows = slice(emitters.starts[start], emitters.starts[stop])
    frames = np.repeat(np.arange(stop - start), np.diff(emitters.starts[start : stop + 1]))
    out = np.zeros((stop - start, height, width), dtype=np.float32)
    if len(frames):
        rows0, wy = _axis_weights(emitters.y[rows], height, float(sigma), kernel)
        cols0, wx = _axis_weights(emitters.x[rows], width, float(sigma), kernel)
        _scatter_add(out, frames, rows0, wy, cols0, wx)
    return out


def _axis_weights(pos, length, sigma, kernel):
    """Per-emitter kernel weights along one axis of ``length`` pixels.

    For ``pos`` of shape (E,), return ``start`` (int64, shape (E,)), the first pixel
    of each emitter's window, and ``weights`` (float32, shape (E, K)), the weights
    of pixels ``start + k``, k = 0..K-1.
    """
    # Simulated emitters stay on for several frames at one position: compute each
    # distinct coordinate once (np.unique costs ~1 ms per 30k emitters).
    pos, inverse = np.unique(pos, return_inverse=True)
    k = min(int(np.ceil(2 * _TRUNCATE * sigma)) + 1, length)
    # Windows near an edge are shifted inwards rather than clipped: they still cover
    # [pos - 5 sigma, pos + 5 sigma] within the frame and never leave it.
    start = np.clip(np.floor(pos - _TRUNCATE * sigma), 0, length - k).astype(np.int64)
    offset = (start - pos)[:, None]  # first window edge relative to the emitter
    if kernel == "integrated":
        cdf = erf((offset + np.arange(k + 1, dtype=np.float64)) * (1.0 / (sigma * np.sqrt(2.0))))
        weights = 0.5 * (cdf[:, 1:] - cdf[:, :-1])
    else:
        centres = offset + (np.arange(k, dtype=np.float64) + 0.5)
        weights = np.exp(-0.5 * (centres / sigma) ** 2) * (1.0 / (sigma * np.sqrt(2.0 * np.pi)))
    return start[inverse], weights.astype(np.float32)[inverse]


def _scatter_add(out, frames, rows0, wy, cols0, wx):
    """Add the outer products ``wy[e] x wx[e]`` into ``out`` at each emitter's window.

    ``np.add.at`` on flat indices beat ``np.bincount`` about 2x on this data
    (numpy >= 1.25; see docs/performance.md).
    """
    _, h, w = out.shape
    ky, kx = wy.shape[1], wx.shape[1]
    index_dtype = np.int32 if out.size < 2**31 else np.int64
    base = (frames * h + rows0) * w + cols0
    offsets = (np.arange(ky)[:, None] * w + np.arange(kx)).astype(index_dtype).ravel()
    flat = out.reshape(-1)
    step = max(1, _BLOCK_ENTRIES // (ky * kx))
    for first in range(0, len(base), step):
        block = slice(first, first + step)
        index = (base[block].astype(index_dtype)[:, None] + offsets).ravel()
        np.add.at(flat, index, (wy[block, :, None] * wx[block, None, :]).ravel())


def segmentation_stack(density, threshold=0.03):
    """Binary segmentation maps: 1 where the density exceeds a threshold.

    Parameters
    ----------
    density : array_like of shape (T, H, W)
        Density maps, e.g. from :func:`density_stack` (any shape works).
    threshold : float
        Pixels with ``density > threshold`` (strictly) are 1.

    Returns
    -------
    ndarray of uint8, same shape as ``density``
    """
    threshold = _finite(threshold, "threshold")
    return (np.asarray(density) > threshold).astype(np.uint8)


def count_per_frame(ground_truth, n_frames, brightness_threshold=250, *, height=None, width=None):
    """Number of emitters brighter than a threshold in each frame.

    Parameters
    ----------
    ground_truth : str, Path, pandas.DataFrame or Emitters
        Frame-logger CSV or DataFrame (see :func:`read_ground_truth`), or
        :class:`Emitters` read for the same arguments. A CSV is streamed in
        chunks: memory does not grow with its length.
    n_frames : int
        Number of frames in the stack.
    brightness_threshold : float or None
        Count emitters with ``brightness > brightness_threshold``; None counts all.
    height, width : int, optional
        If given, emitters outside the frame are dropped (with a warning) as in
        :func:`density_stack`, so counts match the maps' emitters.

    Returns
    -------
    ndarray of int64, shape (n_frames,)
        Count for frames 0 .. n_frames-1 (0-based).
    """
    n_frames = _positive_int(n_frames, "n_frames")
    threshold = _threshold(brightness_threshold)
    emitters = _as_emitters(
        ground_truth, n_frames, height, width, threshold, positions=False, stacklevel=3
    )
    return np.diff(emitters.starts)


# --------------------------------------------------------------------------- helpers
def _threshold(value):
    return None if value is None else _finite(value, "brightness_threshold")


def _bright(columns, threshold):
    if threshold is None:
        return np.ones(len(columns["brightness"]), dtype=bool)
    return columns["brightness"] > threshold


def _positive_int(value, name, optional=False):
    if value is None and optional:
        return None
    try:
        if operator.index(value) >= 1:
            return operator.index(value)
    except TypeError:
        pass
    raise GroundTruthError(f"{name} must be a positive integer, got {value!r}")


def _finite(value, name):
    try:
        if np.isfinite(float(value)):
            return float(value)
    except (TypeError, ValueError):
        pass
    raise GroundTruthError(f"{name} must be a finite number, got {value!r}")


def _frame_range(frame_range, n_frames):
    if frame_range is None:
        return 0, n_frames
    try:
        start, stop = (operator.index(v) for v in frame_range)
    except (TypeError, ValueError):
        start = stop = None
    if start is None or not 0 <= start <= stop <= n_frames:
        raise GroundTruthError(
            f"frame_range must be (start, stop) with 0 <= start <= stop <= "
            f"n_frames ({n_frames}), got {frame_range!r}"
        )
    return start, stop
