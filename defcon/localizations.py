"""Localization tables of other software, read in chunks as frame-logger ground truth.

A :class:`Localizations` names a table on disk and how its columns map onto the
frame-logger form that :mod:`defcon.groundtruth` uses (frame 1-based; ``x`` the
column and ``y`` the row in pixels, origin at the top-left corner of the
top-left pixel, so the centre of pixel (r, c) is (c + 0.5, r + 0.5);
brightness in photons). The format is detected from the header (CSV) or the
structure (HDF5), or given:

============  ===========  ==========  =======================  =======================
format        frame base   x, y unit   pixel centre (c, r) at   brightness column
============  ===========  ==========  =======================  =======================
sass          1            px          (c + 0.5, r + 0.5)       ``brightness``
thunderstorm  1            nm (or px)  (c + 0.5, r + 0.5)       ``intensity [photon]``
picasso       0            px          (c, r)                   ``photons``
decode        0            px (or nm)  (c, r)                   ``phot``
============  ===========  ==========  =======================  =======================

Values are validated by :mod:`defcon.groundtruth` in the table's own columns
and frame base, so messages name the column and line (or row) of the file.
"""

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from .errors import GroundTruthError, MissingFileError, ParameterError, UnsupportedFileError

__all__ = ["FORMATS", "Layout", "Localizations", "detect_format"]

FORMATS = ("sass", "thunderstorm", "picasso", "decode")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_DECODE_MARK = "# DECODE EmitterSet"


@dataclass(frozen=True)
class Layout:
    """How a table's columns map onto the frame-logger columns.

    Attributes
    ----------
    format : str
        One of :data:`FORMATS`.
    columns : dict of str to str
        Frame-logger name (``frame``, ``x``, ``y``, ``brightness``) to the table's column.
    first_frame : int
        Number of the table's first frame (0 or 1).
    pixel_size_nm : tuple of float or None
        ``(x, y)`` pixel size when the table's positions are in nm, else None.
    shift : float
        Added to positions once in pixels: 0.5 where the table puts pixel
        centres at whole numbers.
    hint : str
        What the table should look like, for error messages.
    movie_shape : tuple of int or None
        ``(frames, height, width)`` of the movie the table was made from, when
        the file says (Picasso's ``.yaml``).
    """

    format: str
    columns: dict
    first_frame: int = 1
    pixel_size_nm: tuple = None
    shift: float = 0.0
    hint: str = "expected a frame-logger CSV with the header frame,id,x,y,z,brightness"
    movie_shape: tuple = None

    def to_pixels(self, values, axis):
        """Positions ``values`` of shape (N,) along ``axis`` ('x' or 'y') in defcon pixels."""
        if self.pixel_size_nm is not None:
            values = values / self.pixel_size_nm[axis == "y"]
        return values + self.shift if self.shift else values


#: The columns every table becomes: frame (1-based), x, y (pixels), brightness.
REQUIRED_COLUMNS = ("frame", "x", "y", "brightness")
#: Frame-logger CSVs and DataFrames: nothing to convert.
FRAME_LOGGER = Layout("sass", {name: name for name in REQUIRED_COLUMNS})


class Localizations:
    """A localization table on disk, read in chunks in any of :data:`FORMATS`.

    Parameters
    ----------
    path : str or Path
        The table: a CSV (SASS frame logger, ThunderSTORM, DECODE) or an HDF5
        file (Picasso ``*_locs.hdf5``, DECODE).
    format : {'sass', 'thunderstorm', 'picasso', 'decode'}, optional
        Default: detected from the CSV header or the HDF5 structure; a CSV that
        matches no other format is read as a SASS frame logger.
    pixel_size_nm : float, optional
        Camera pixel size in nm, for tables whose positions are in nm
        (ThunderSTORM ``x [nm]``; DECODE with ``xy_unit`` nm, where it
        overrides the file's ``px_size``). Ignored for positions in pixels.

    Attributes
    ----------
    path : Path
    format : str
    layout : Layout
    label : str
        The path, for messages.

    Raises
    ------
    MissingFileError, UnsupportedFileError
        If the file does not exist, is a folder or is an HDF5 file of no known layout.
    GroundTruthError
        If a required column is missing, or positions are in nm and no pixel
        size is known.
    ParameterError
        For an unknown format or a pixel size that is not a positive number.
    """

    def __init__(self, path, format=None, pixel_size_nm=None):
        self.path = Path(path)
        self.label = str(self.path)
        if not self.path.exists():
            raise MissingFileError(f"{self.path}: ground-truth table not found")
        if self.path.is_dir():
            raise UnsupportedFileError(f"{self.path}: is a folder; {FRAME_LOGGER.hint}")
        if format is not None and format not in FORMATS:
            raise ParameterError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        pixel_size_nm = _pixel_size(pixel_size_nm)
        self.format = format or detect_format(self.path)
        self.layout, self._chunks, self._rows = _OPENERS[self.format](self.path, pixel_size_nm)

    def __repr__(self):
        return f"<Localizations {self.label} ({self.describe()})>"

    def check_stack(self, stack_path, shape):
        """Refuse a stack of another frame size than the movie the table describes.

        Parameters
        ----------
        stack_path : str or Path
        shape : tuple of int
            ``(frames, height, width)`` of the stack.

        Raises
        ------
        GroundTruthError
            The table's metadata give another frame size (a different movie or a crop).
        """
        movie = self.layout.movie_shape
        if movie is not None and tuple(movie[1:]) != tuple(shape[1:]):
            raise GroundTruthError(
                f"{self.label}: localized on a movie of {movie[0]} frames of {movie[1]} x "
                f"{movie[2]} px (its .yaml), but {stack_path} has frames of {shape[1]} x "
                f"{shape[2]} px: is it the same movie, uncropped?"
            )

    def describe(self):
        """The format and, for nm tables, the pixel size, e.g. ``'thunderstorm, 100 nm/px'``."""
        size = self.layout.pixel_size_nm
        if size is None:
            return self.format
        sizes = " x ".join(f"{s:g}" for s in sorted(set(size)))
        return f"{self.format}, {sizes} nm/px"

    def chunks(self, chunk_rows):
        """Yield ``(table, where)`` for each chunk of at most ``chunk_rows`` rows.

        ``table`` is a DataFrame with the file's own columns; ``where(index)``
        names a row's line (CSV) or row (HDF5) for messages. At least one chunk
        (empty for a table without rows) is yielded.
        """
        return self._chunks(chunk_rows)

    def max_rows(self):
        """An upper bound on the number of rows."""
        return self._rows()


def detect_format(path):
    """The format of the table at ``path``, from its header or HDF5 structure.

    Parameters
    ----------
    path : Path

    Returns
    -------
    str
        One of :data:`FORMATS`; ``'sass'`` for a CSV that matches nothing else.

    Raises
    ------
    UnsupportedFileError
        For an HDF5 file with neither a Picasso ``locs`` dataset nor DECODE ``data/xyz``.
    """
    with open(path, "rb") as file:
        if file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
            with _open_hdf5(path) as f:
                if "locs" in f:
                    return "picasso"
                if "data/xyz" in f:
                    return "decode"
            raise UnsupportedFileError(
                f"{path}: an HDF5 file with neither a Picasso 'locs' dataset nor DECODE "
                "'data/xyz'; expected a localization table"
            )
    comments, header = _csv_header(path)
    if (comments and comments[0].startswith(_DECODE_MARK)) or "frame_ix" in header:
        return "decode"
    if {"x [nm]", "x [px]"} & set(header):
        return "thunderstorm"
    return "sass"


# --------------------------------------------------------------------------- formats
def _open_sass(path, pixel_size_nm):
    return FRAME_LOGGER, _csv_reader(path, 0, FRAME_LOGGER.hint), _csv_rows(path)


def _open_thunderstorm(path, pixel_size_nm):
    _, header = _csv_header(path)
    hint = (
        "expected a ThunderSTORM CSV with the columns frame, x [nm], y [nm] (or x [px], "
        "y [px]) and intensity [photon]"
    )
    unit = "px" if {"x [px]", "y [px]"} <= set(header) else "nm"
    intensity = [name for name in header if name.startswith("intensity")]
    brightness = "intensity [photon]" if "intensity [photon]" in header else intensity[:1]
    columns = {
        "frame": "frame",
        "x": f"x [{unit}]",
        "y": f"y [{unit}]",
        "brightness": brightness or "intensity [photon]",
    }
    _require(path, header, columns.values(), hint)
    if unit == "nm" and pixel_size_nm is None:
        raise GroundTruthError(
            f"{path}: ThunderSTORM positions are in nm ('x [nm]', 'y [nm]'); give the "
            "camera pixel size with --pixel-size NM (pixel_size_nm=...)"
        )
    size = pixel_size_nm if unit == "nm" else None
    layout = Layout("thunderstorm", columns, 1, size, 0.0, hint)
    return layout, _csv_reader(path, 0, hint), _csv_rows(path)


def _open_picasso(path, pixel_size_nm):
    hint = "expected a Picasso *_locs.hdf5 with a dataset 'locs' (fields frame, x, y, photons)"
    with _open_hdf5(path) as f:
        locs = f.get("locs")
        if not isinstance(locs, h5py.Dataset) or locs.dtype.names is None:
            raise UnsupportedFileError(f"{path}: no table 'locs'; {hint}")
        fields, n = locs.dtype.names, len(locs)
    columns = {"frame": "frame", "x": "x", "y": "y", "brightness": "photons"}
    _require(path, fields, columns.values(), hint)

    def chunks(chunk_rows):
        with _open_hdf5(path) as f:
            for start in range(0, max(n, 1), chunk_rows):
                rows = f["locs"][start : start + chunk_rows]
                yield _table(rows, start), lambda index: f"row {index} of 'locs'"

    movie = _picasso_movie_shape(path.with_suffix(".yaml"))
    return Layout("picasso", columns, 0, None, 0.5, hint, movie), chunks, lambda: n


def _picasso_movie_shape(path):
    """``(Frames, Height, Width)`` from Picasso's ``.yaml`` beside the locs, or None.

    Picasso writes one YAML document per processing step; the first holds
    the movie's size.
    """
    if not path.is_file():
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            documents = list(yaml.safe_load_all(file))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise GroundTruthError(f"{path}: not a Picasso metadata file (YAML): {err}") from err
    for document in documents:
        if isinstance(document, dict) and {"Frames", "Height", "Width"} <= set(document):
            try:
                return tuple(int(document[key]) for key in ("Frames", "Height", "Width"))
            except (TypeError, ValueError):
                break
    return None


def _open_decode(path, pixel_size_nm):
    hint = "expected a DECODE emitter table with x, y, phot and frame_ix"
    columns = {"frame": "frame_ix", "x": "x", "y": "y", "brightness": "phot"}
    with open(path, "rb") as file:
        hdf5 = file.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE
    if hdf5:
        with _open_hdf5(path) as f:
            if "data/xyz" not in f:
                raise UnsupportedFileError(f"{path}: no dataset 'data/xyz'; {hint}")
            meta = dict(f["meta"].attrs) if "meta" in f else {}
            data = f["data"]
            n = len(data["xyz"])
            present = [name for name in ("phot", "frame_ix") if name in data] + ["x", "y"]
        _require(path, present, columns.values(), hint)
        chunks = _decode_hdf5_reader(path, n)
        rows = lambda: n  # noqa: E731 - a bound, as for the other formats
    else:
        comments, header = _csv_header(path)
        _require(path, header, columns.values(), hint)
        meta = {}
        for line in comments:
            try:
                value = json.loads(line.lstrip("#").strip())
            except ValueError:
                continue
            if isinstance(value, dict) and "xy_unit" in value:
                meta = value
        chunks, rows = _csv_reader(path, len(comments), hint), _csv_rows(path)
    unit = _text(meta.get("xy_unit", "px"))
    if unit not in ("px", "nm"):
        raise GroundTruthError(f"{path}: xy_unit {unit!r}; expected 'px' or 'nm'")
    size = None
    if unit == "nm":
        size = pixel_size_nm or _decode_pixel_size(meta.get("px_size"))
        if size is None:
            raise GroundTruthError(
                f"{path}: DECODE positions are in nm (xy_unit nm) and the file gives no "
                "px_size; give the camera pixel size with --pixel-size NM (pixel_size_nm=...)"
            )
    return Layout("decode", columns, 0, size, 0.5, hint), chunks, rows


_OPENERS = {
    "sass": _open_sass,
    "thunderstorm": _open_thunderstorm,
    "picasso": _open_picasso,
    "decode": _open_decode,
}


# --------------------------------------------------------------------------- helpers
def _pixel_size(value):
    """``value`` as an ``(x, y)`` pair of positive floats, or None."""
    if value is None:
        return None
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = math.nan
    if not (math.isfinite(size) and size > 0):
        raise ParameterError(f"pixel size must be a positive number of nm, got {value!r}")
    return (size, size)


def _decode_pixel_size(value):
    """DECODE's ``px_size`` (a number or an (x, y) pair) as an ``(x, y)`` pair, or None."""
    if value is None:
        return None
    sizes = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if sizes.size not in (1, 2) or not np.all(np.isfinite(sizes) & (sizes > 0)):
        return None
    return (float(sizes[0]), float(sizes[-1]))


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _require(path, found, needed, hint):
    missing = [name for name in needed if name not in found]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        raise GroundTruthError(
            f"{path}: missing column(s) {names} (found: {', '.join(map(str, found)) or 'none'}); "
            f"{hint}"
        )


def _csv_header(path):
    """``(comments, header)``: the leading ``#`` lines and the column names of a CSV."""
    comments = []
    with open(path, encoding="utf-8", errors="replace", newline="") as file:
        for line in file:
            if not line.startswith("#"):
                names = next(csv.reader([line]), [])
                return comments, [name.strip() for name in names]
            comments.append(line.strip())
    return comments, []


def _csv_rows(path):
    """A function giving an upper bound on the rows of a CSV (its line breaks, CR and LF each)."""

    def count():
        total = 1
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 24), b""):
                total += block.count(b"\n") + block.count(b"\r")
        return total

    return count


def _csv_reader(path, skip, hint):
    """A function yielding a CSV in chunks, after ``skip`` comment lines, without blank lines."""
    first = skip + 2  # line number of the first row

    def chunks(chunk_rows):
        try:
            # Blank lines are kept as all-NaN rows so that the index gives the line
            # number (the index runs on from chunk to chunk).
            with pd.read_csv(
                path, skiprows=skip, skip_blank_lines=False, chunksize=chunk_rows, low_memory=False
            ) as reader:
                for table in reader:
                    table.columns = [str(name).strip() for name in table.columns]
                    yield table.dropna(how="all"), lambda index: f"line {index + first}"
        except pd.errors.EmptyDataError:
            raise GroundTruthError(f"{path}: the file is empty; {hint}") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise UnsupportedFileError(f"{path}: cannot be read as CSV ({exc}); {hint}") from None

    return chunks


def _decode_hdf5_reader(path, n):
    def chunks(chunk_rows):
        with _open_hdf5(path) as f:
            data = f["data"]
            for start in range(0, max(n, 1), chunk_rows):
                stop = start + chunk_rows
                xyz = data["xyz"][start:stop]
                table = {"x": xyz[:, 0], "y": xyz[:, 1]}
                table.update((name, data[name][start:stop]) for name in ("phot", "frame_ix"))
                if "id" in data and data["id"].shape == (n,):
                    table["id"] = data["id"][start:stop]
                yield _table(table, start), lambda index: f"row {index} of 'data'"

    return chunks


def _table(columns, start):
    """A DataFrame of the 1-D fields of ``columns`` (records or a dict), indexed from ``start``."""
    names = columns.dtype.names if isinstance(columns, np.ndarray) else list(columns)
    data = {name: columns[name] for name in names if np.ndim(columns[name]) == 1}
    n = len(next(iter(data.values()))) if data else 0
    return pd.DataFrame(data, index=pd.RangeIndex(start, start + n))


def _open_hdf5(path):
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise UnsupportedFileError(f"{path}: cannot be read as HDF5 ({exc})") from None
