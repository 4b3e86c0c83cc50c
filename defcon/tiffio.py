"""Reading TIFF stacks frame by frame, in bounded memory.

Stacks may be larger than RAM, so nothing here reads a whole file unless asked
to: :class:`TiffStack` reads ranges of frames, from a memory map when the pixel
data are uncompressed and contiguous, else page by page.

Every frame of a file is read or the read fails loudly:

- a file written in several parts (several series, e.g. one ``write()`` per
  frame) is one stack of all its series;
- a hyperstack (ImageJ TZCYX, OME-TIFF, tifffile shaped files) is read one
  channel and one z plane at a time (``channel=``, ``z=``), its remaining axis
  as frames; without a choice an ambiguous hyperstack is an error;
- a multi-file OME-TIFF (Micro-Manager ``*_MMStack_Pos0.ome.tif``, ``..._1.ome.tif``)
  is read across its files; a missing companion file is an error naming it;
- a truncated or damaged file is an error naming the last complete frame, or,
  with ``allow_truncated=True``, a stack of its intact frames;
- pages the file's metadata leave out are an error;
- NaN or infinite pixels are an error naming the frames, or, with
  ``nonfinite='flag'``, frames recorded in :attr:`TiffStack.nonfinite_frames`.
"""

import logging
import mmap
import threading
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import tifffile

from .errors import MissingFileError, ParameterError, UnsupportedFileError
from .files import existing_file

log = logging.getLogger(__name__)

#: Pixel types read as they are stored; integers are scaled to [0, 1] by :func:`to_float`.
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
TIFF_SUFFIXES = (".tif", ".tiff")
#: What :meth:`TiffStack.read` does with frames holding NaN or infinite pixels.
NONFINITE = ("error", "flag")
#: Axes a plane can be chosen along: (TiffStack keyword, command-line option).
CHOICES = {"C": ("channel", "--channel"), "Z": ("z", "--z")}
#: tifffile's axes of ImageJ hyperstacks for each ImageJ 'order' (slowest first).
_IMAGEJ_ORDER = {
    "czt": "TZC",
    "default": "TZC",
    "ctz": "ZTC",
    "zct": "TCZ",
    "ztc": "CTZ",
    "tcz": "ZCT",
    "tzc": "CZT",
}
#: tifffile log messages that mean the file's chain of images is broken.
_BROKEN_CHAIN = (
    "invalid page offset",
    "invalid offset to page",
    "circular reference",
    "corrupted IFD",
    "invalid value offset",
    "ImageJ series metadata invalid",
    "failed to reshape",
    "Missing data are zeroed",
    "is missing",
)


class TiffStack:
    """A single-channel TIFF stack opened for reading ranges of frames.

    Parameters
    ----------
    path : str or Path
        A TIFF file holding one image, a stack of 2-D grey-level frames, or a
        hyperstack (e.g. ImageJ TZCYX) from which ``channel`` and ``z`` choose
        one plane per frame. The first file of a multi-file OME-TIFF reads all
        its files.
    series : int, optional
        Read only this series (0-based) of a file holding several; by default
        all series, in order, when their frames have one shape and type.
    channel, z : int, optional
        Keep this plane (0-based) of the channel (C) or depth (Z) axis and read
        the one axis left (usually time) as frames. Needed when more than one
        axis before Y and X holds several planes; 0 is accepted for a file
        without that axis.
    allow_truncated : bool
        Read the intact frames of a truncated or damaged file (with a logged
        warning and :attr:`truncated` set) instead of raising.
    nonfinite : {'error', 'flag'}
        What :meth:`read` does with frames holding NaN or infinite pixels:
        raise, or return them as stored and add their 0-based indices to
        :attr:`nonfinite_frames`.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        ``(frames, height, width)``.
    dtype : numpy.dtype
        The stored pixel type.
    axes : str
        Axes of the file's (first) series as tifffile names them, e.g. ``'TZCYX'``.
    truncated : tuple of (int or None, int) or None
        ``(declared frames or None when unknown, frames read)`` when
        ``allow_truncated`` kept the intact frames of a truncated file, else None.
    nonfinite_frames : set of int
        0-based frames :meth:`read` found holding NaN or infinite pixels
        (``nonfinite='flag'``).

    Raises
    ------
    MissingFileError
        The file, or a companion file listed by a multi-file OME-TIFF, does not exist.
    UnsupportedFileError
        Not a TIFF, empty, RGB, an unsupported pixel type, series of different
        frame shapes, a hyperstack without a choice of plane (the message lists
        its axes and the options), pages the metadata leave out, or truncated
        (the message names the last complete frame).

    Examples
    --------
    >>> with TiffStack("stack.tif") as stack:  # doctest: +SKIP
    ...     for start, frames in stack.chunks(256):
    ...         process(to_float(frames))
    >>> # A TZCYX hyperstack: frames are its T planes of channel 1, z 0.
    >>> with TiffStack("hyperstack.tif", channel=1, z=0) as stack:  # doctest: +SKIP
    ...     stack.shape
    """

    def __init__(
        self, path, series=None, channel=None, z=None, *, allow_truncated=False, nonfinite="error"
    ):
        if nonfinite not in NONFINITE:
            raise ParameterError(f"nonfinite must be one of {NONFINITE}, not {nonfinite!r}")
        self.path = existing_file(path, "TIFF stack")
        self._series_index = series
        self._picks = {"C": channel, "Z": z}
        self._allow_truncated = bool(allow_truncated)
        self.nonfinite = nonfinite
        self.nonfinite_frames = set()
        self.truncated = None
        self._parts, self._mapping, self._file = [], None, None
        with _CapturedLog() as tifflog:
            try:
                self._tif = tifffile.TiffFile(self.path)
            except (tifffile.TiffFileError, ValueError, OSError) as err:
                raise UnsupportedFileError(
                    f"{self.path}: not a readable TIFF file ({err})"
                ) from err
            try:
                self._inspect(tifflog)
            except tifffile.TiffFileError as err:
                self.close()
                raise UnsupportedFileError(f"{self.path}: damaged TIFF file ({err})") from err
            except BaseException:
                self.close()
                raise
        for record in tifflog:
            level = logging.DEBUG if _explained(record) else record.levelno
            log.log(level, "%s: tifffile: %s", self.path.name, record.getMessage())

    # ------------------------------------------------------------ inspection
    def _inspect(self, tifflog):
        tif = self._tif
        if not tif.series or not tif.pages:
            raise UnsupportedFileError(f"{self.path}: empty TIFF (no images)")
        all_series = list(tif.series)
        if self._series_index is not None:
            if not 0 <= self._series_index < len(all_series):
                raise UnsupportedFileError(
                    f"{self.path}: no series {self._series_index} (the "
                    f"file holds {len(all_series)})"
                )
            all_series = [all_series[self._series_index]]
        self._check_companion_files()
        self.axes = all_series[0].axes
        declared = self._declared_planes()
        planes = sum(_n_planes(s.shape) for s in all_series)
        # without metadata, a broken chain of pages hides how many frames there were
        unknown_length = all(s.kind in ("generic", "uniform") for s in all_series)
        if self._series_index is None and declared is not None and planes < declared:
            parts = [self._recovered_part(declared)]  # tifffile lost the layout
            unknown_length = False
        else:
            parts = [self._series_part(s) for s in all_series]
            if self._series_index is None:
                self._check_all_pages_covered()
        shapes = {(h, w, dtype) for *_, h, w, dtype in parts}
        if len(shapes) > 1:
            listing = "; ".join(
                f"series {i}: {len(p)} x {h} x {w} {dtype}"
                for i, (p, _, _, h, w, dtype) in enumerate(parts)
            )
            raise UnsupportedFileError(
                f"{self.path}: its series have different frame shapes or types ({listing}); "
                "choose one with --series N (TiffStack(path, series=N))"
            )
        ((height, width, self.dtype),) = shapes
        declared_frames, kept = 0, []
        for planes, available, reader, *_ in parts:
            declared_frames += len(planes)
            intact = planes[planes < available]
            kept.append((intact, reader))
            if len(intact) < len(planes):  # the file ends here: later parts cannot exist
                break
        n_frames = sum(len(p) for p, _ in kept)
        broken = [r.getMessage() for r in tifflog if _explained(r)]
        if n_frames < declared_frames or (broken and unknown_length):
            self._truncated(
                None if unknown_length else declared_frames, n_frames, broken[0] if broken else None
            )
        self._parts = [p for p in kept if len(p[0])]
        self.shape = (n_frames, height, width)
        if n_frames == 0:
            raise UnsupportedFileError(f"{self.path}: no complete frame in the file")

    def _declared_planes(self):
        """Planes the file's ImageJ or tifffile metadata declare, or None."""
        tif = self._tif
        if tif.is_imagej and tif.imagej_metadata:
            return int(tif.imagej_metadata.get("images", 1))
        if tif.is_shaped and tif.shaped_metadata:
            shapes = [m.get("shape") for m in tif.shaped_metadata]
            if all(shapes):
                return sum(_n_planes(shape) for shape in shapes)
        return None

    def _declared_layout(self, declared):
        """``(axes, shape)`` before Y and X that the metadata declare for ``declared`` planes."""
        tif, axes, shape = self._tif, "I", (declared,)
        if tif.is_imagej and tif.imagej_metadata:
            meta = tif.imagej_metadata
            order = _IMAGEJ_ORDER.get(str(meta.get("order", "czt")).lower(), "TZC")
            counts = {
                "T": meta.get("frames", 1),
                "Z": meta.get("slices", 1),
                "C": meta.get("channels", 1),
            }
            axes, shape = order, tuple(int(counts[a]) for a in order)
        elif tif.is_shaped and len(tif.shaped_metadata) == 1:
            meta = tif.shaped_metadata[0]
            shape = tuple(int(n) for n in meta["shape"][:-2])
            axes = str(meta.get("axes", "Q" * (len(shape) + 2)))[: len(shape)]
        if int(np.prod(shape)) != declared or len(axes) != len(shape):
            return "I", (declared,)
        kept = [(a, n) for a, n in zip(axes, shape) if n > 1] or [("I", 1)]
        return "".join(a for a, _ in kept), tuple(n for _, n in kept)

    def _series_part(self, series):
        """``(planes, available, reader, height, width, dtype)`` of one grey-level series.

        ``planes`` are the chosen planes in storage order, one per frame;
        ``available`` the number of storage planes the file holds intact.
        """
        if series.size == 0:
            raise UnsupportedFileError(f"{self.path}: empty TIFF (no pixels)")
        axes = series.axes
        if "S" in axes or series.keyframe.photometric in (tifffile.PHOTOMETRIC.RGB,):
            raise UnsupportedFileError(
                f"{self.path}: RGB/multi-sample TIFF (axes {axes}, shape {series.shape}); "
                "expected grey-level frames - convert to 8/16/32-bit grey first"
            )
        shape = tuple(int(n) for n in series.shape)
        height, width, dtype = shape[-2], shape[-1], self._check_dtype(series.dtype)
        planes = self._choose(axes[:-2], shape[:-2], axes, shape)
        n_planes = _n_planes(shape)
        if series.dataoffset is not None:  # one block of pixels: the file size tells
            plane_bytes = height * width * dtype.itemsize
            available = min(n_planes, max(0, (self._size() - series.dataoffset) // plane_bytes))
            reader = self._mapped(series.dataoffset, available, height, width, dtype)
        else:
            if tuple(series.keyframe.shape) != (height, width):
                raise UnsupportedFileError(
                    f"{self.path}: pages of {series.keyframe.shape} pixels in a series of axes "
                    f"{axes}, shape {shape}; expected one {height} x {width} plane per page"
                )
            available = self._intact_pages(series, n_planes, planes)
            reader = self._paged(series, height, width)
        return planes, available, reader, height, width, dtype

    def _recovered_part(self, declared):
        """The part of a damaged file whose metadata declare more planes than tifffile found."""
        pages = self._tif.pages
        page = pages.first
        if len(page.shape) != 2:
            raise UnsupportedFileError(
                f"{self.path}: truncated or damaged file of pages of "
                f"shape {page.shape}; expected 2-D grey-level frames"
            )
        height, width = page.shape
        dtype = self._check_dtype(page.dtype)
        axes, shape = self._declared_layout(declared)
        planes = self._choose(axes, shape, axes + "YX", shape + (height, width))
        plane_bytes = height * width * dtype.itemsize
        start = page.dataoffsets[0]
        if page.is_contiguous and all(  # every page found holds one plane, each after the last
            tuple(p.dataoffsets) == (start + i * plane_bytes,)
            and tuple(p.databytecounts) == (plane_bytes,)
            for i, p in enumerate(pages)
        ):
            # contiguous pixels (ImageJ, tifffile): their IFDs may be lost, the pixels not
            available = min(declared, max(0, (self._size() - start) // plane_bytes))
            return (
                planes,
                available,
                self._mapped(start, available, height, width, dtype),
                height,
                width,
                dtype,
            )
        available = self._intact_pages(pages, declared, planes)
        return planes, available, self._paged(None, height, width), height, width, dtype

    def _check_dtype(self, dtype):
        dtype = np.dtype(dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise UnsupportedFileError(
                f"{self.path}: pixel type {dtype} is not supported "
                f"(supported: {', '.join(SUPPORTED_DTYPES)})"
            )
        return dtype

    def _choose(self, axes, shape, all_axes, all_shape):
        """Storage indices of the planes read as frames, 1-D, in frame order.

        ``axes``/``shape`` are the series' axes before Y and X; ``channel`` and
        ``z`` fix one index of C and Z; at most one axis of several planes may be left.
        """
        for axis, pick in self._picks.items():
            if pick is not None and axis not in axes and pick != 0:
                raise UnsupportedFileError(
                    f"{self.path}: no {CHOICES[axis][0]} {pick}: the file has no {axis} axis "
                    f"(axes {all_axes}, shape {all_shape}; 0-based)"
                )
        index, left = [], []
        for axis, n in zip(axes, shape):
            pick = self._picks.get(axis)
            if pick is None:
                index.append(slice(None))
                left += [axis] if n > 1 else []
            elif not 0 <= pick < n:
                raise UnsupportedFileError(
                    f"{self.path}: no {CHOICES[axis][0]} {pick}: axis {axis} holds {n} (0 to "
                    f"{n - 1}; axes {all_axes}, shape {all_shape})"
                )
            else:
                index.append(pick)
        if len(left) > 1:
            raise UnsupportedFileError(self._ambiguous(left, all_axes, all_shape))
        return np.arange(_n_planes(shape + (1, 1))).reshape(shape)[tuple(index)].reshape(-1)

    def _ambiguous(self, left, axes, shape):
        options = [CHOICES[a] for a in left if a in CHOICES]
        others = [a for a in left if a not in CHOICES]
        text = (
            f"{self.path}: a {len(shape)}-D hyperstack (axes {axes}, shape {shape}) with "
            f"several planes along {' and '.join(left)}; defcon counts one 2-D plane per "
            "frame"
        )
        if len(others) > 1:
            return (
                text + f" and no option chooses along {' or '.join(others)}: save one "
                "stack per plane first (Fiji: Image > Hyperstacks > Reduce Dimensionality)"
            )
        flags = " and/or ".join(f"{flag} N" for _, flag in options)
        keywords = ", ".join(f"{key}=N" for key, _ in options)
        return (
            text + f": choose a plane with {flags} (0-based; in Python "
            f"TiffStack(path, {keywords})) so that one axis is left as frames"
        )

    def _intact_pages(self, pages, n_planes, planes):
        """Storage planes, from the first, whose pages hold all their pixels in the file."""
        available, missing = min(n_planes, len(pages)), []
        i = 0
        try:
            for i, page in enumerate(pages):
                if i >= available:
                    break
                if page is None:
                    missing.append(i)
                    continue
                end = max(o + c for o, c in zip(page.dataoffsets, page.databytecounts))
                if end > page.parent.filehandle.size:
                    available = i
                    break
        except tifffile.TiffFileError:  # the chain of pages breaks at page i
            available = i
        missing = [m for m in missing if m < available]
        if missing and missing[-1] == available - 1 == missing[0] + len(missing) - 1:
            available = missing[0]  # only the last pages are missing: truncated
        elif missing:
            frames = np.flatnonzero(np.isin(planes, missing)) + 1
            if frames.size:
                shown = ", ".join(str(f) for f in frames[:10])
                raise UnsupportedFileError(
                    f"{self.path}: frame(s) {shown}{' ...' if frames.size > 10 else ''} "
                    f"(1-based) have no pixel data in the file ({len(missing)} of "
                    f"{n_planes} planes are missing)"
                )
        return available

    def _check_companion_files(self):
        """Raise when files listed by the OME-XML of a multi-file OME-TIFF are missing."""
        if not self._tif.is_ome:
            return
        try:
            root = ElementTree.fromstring(self._tif.ome_metadata)
        except (ElementTree.ParseError, TypeError):
            return
        names = {
            e.attrib["FileName"]
            for e in root.iter()
            if e.tag.endswith("UUID") and "FileName" in e.attrib
        }
        missing = sorted(n for n in names if not (self.path.parent / n).is_file())
        if missing:
            raise MissingFileError(
                f"{self.path}: multi-file OME-TIFF whose companion file(s) "
                f"{', '.join(missing)} are missing from {self.path.parent} (its OME-XML "
                f"lists {len(names)} files); put them beside it"
            )

    def _check_all_pages_covered(self):
        """Raise when the file holds pages that none of its series reads."""
        tif = self._tif
        covered = sum(self._pages_here(level) for series in tif.series for level in series.levels)
        held = len(tif.pages)
        if covered < held:
            held = sum(1 for page in tif.pages if any(page.databytecounts))  # not empty ones
        if covered < held:
            series = tif.series[0]
            raise UnsupportedFileError(
                f"{self.path}: holds {held} images but its {series.kind} metadata describe "
                f"{covered} (axes {series.axes}, shape {series.shape}); the other "
                f"{held - covered} would not be read - fix the metadata or re-save the stack"
            )

    def _pages_here(self, series):
        """Pages of this file that ``series`` reads."""
        if series.dataoffset is not None:
            return _n_planes(series.shape)
        return sum(1 for page in series if page is not None and page.parent is self._tif)

    def _truncated(self, declared, complete, reason=None):
        what = (
            f"it declares {declared} frames but ends after frame {complete}"
            if declared
            else f"it ends after frame {complete} (no metadata records how many frames it "
            f"held{'; tifffile: ' + reason if reason else ''})"
        )
        if not self._allow_truncated:
            raise UnsupportedFileError(
                f"{self.path}: truncated or damaged file: {what} (1-based; the last complete "
                "frame); --allow-truncated (allow_truncated=True) reads the intact frames"
            )
        log.warning(
            "%s: truncated or damaged file: %s; reading the %d intact frames",
            self.path,
            what,
            complete,
        )
        self.truncated = (declared, complete)

    def _size(self):
        return self.path.stat().st_size

    # ------------------------------------------------------------ readers
    def _mapped(self, offset, n_planes, height, width, dtype):
        """Reader of planes from a memory map of contiguous pixels at ``offset``."""
        if n_planes == 0:
            return lambda planes: np.empty((0, height, width), dtype)
        if self._mapping is None:
            self._file = open(self.path, "rb")
            self._mapping = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        stored, native = dtype.newbyteorder(self._tif.byteorder), dtype.newbyteorder("=")

        def read(planes):
            # a view of the map only while reading: the map can always be closed
            data = np.frombuffer(
                self._mapping, stored, count=n_planes * height * width, offset=offset
            ).reshape(n_planes, height, width)
            if len(planes) and planes[-1] - planes[0] == len(planes) - 1:  # a range
                return data[planes[0] : planes[-1] + 1].astype(native)
            return data[planes].astype(native, copy=False)

        return read

    def _paged(self, series, height, width):
        """Reader of planes page by page (of ``series``, or of the file when None)."""

        def read(planes):
            frames = self._tif.asarray(key=[int(p) for p in planes], series=series)
            return frames.reshape((len(planes), height, width))

        return read

    def _release_pages(self):
        # Pages read through the map would otherwise count in the process's
        # resident memory and grow with the stack; they stay in the page cache.
        if self._mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._mapping.madvise(mmap.MADV_DONTNEED)

    # ------------------------------------------------------------ public
    def __len__(self):
        return self.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the file(s) and the memory map."""
        self._parts = []
        if self._mapping is not None:
            self._mapping.close()
            self._file.close()
            self._mapping = None
        self._tif.close()

    def __repr__(self):
        return f"TiffStack('{self.path}', shape={self.shape}, dtype={self.dtype})"

    def read(self, start=0, stop=None):
        """Read frames ``start`` to ``stop - 1`` (0-based) as stored.

        Returns
        -------
        ndarray of shape (stop - start, H, W), the file's dtype

        Raises
        ------
        UnsupportedFileError
            A frame holds NaN or infinite pixels (the message names them), unless
            the stack was opened with ``nonfinite='flag'``: then their indices are
            added to :attr:`nonfinite_frames`.
        """
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        pieces, first = [], 0
        for planes, reader in self._parts:
            a, b = max(start, first) - first, min(stop, first + len(planes)) - first
            if a < b:
                pieces.append(reader(planes[a:b]))
            first += len(planes)
        self._release_pages()
        if not pieces:
            return np.empty((0,) + self.shape[1:], self.dtype)
        frames = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if frames.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(frames).all(axis=(1, 2)))
            if bad.size and self.nonfinite == "flag":
                self.nonfinite_frames.update(int(start + i) for i in bad)
            elif bad.size:
                numbers = ", ".join(str(start + i + 1) for i in bad[:10])
                raise UnsupportedFileError(
                    f"{self.path}: frame(s) {numbers} (1-based) hold NaN or infinite pixels; "
                    "counts there would be meaningless"
                )
        return frames

    def chunks(self, chunk_frames):
        """Yield ``(start, frames)`` over the whole stack, ``chunk_frames`` at a time.

        Yields
        ------
        start : int
            0-based index of the first frame of the chunk.
        frames : ndarray of shape (n <= chunk_frames, H, W)
        """
        for start in range(0, self.shape[0], chunk_frames):
            yield start, self.read(start, start + chunk_frames)


def _n_planes(shape):
    """Number of 2-D planes in an array of ``shape`` (..., Y, X)."""
    return int(np.prod(shape[:-2], dtype=np.int64)) if len(shape) > 2 else 1


def _explained(record):
    """True for tifffile messages that the checks here turn into errors or warnings."""
    return any(text in record.getMessage() for text in _BROKEN_CHAIN)


class _CapturedLog(logging.Filter):
    """Hold back tifffile's log records of this thread while a file is inspected.

    ``with _CapturedLog() as records:`` gives the list of records held back.
    """

    def __init__(self):
        super().__init__()
        self.records = []

    def filter(self, record):
        if record.thread != threading.get_ident():
            return True
        self.records.append(record)
        return False

    def __enter__(self):
        logging.getLogger("tifffile").addFilter(self)
        return self.records

    def __exit__(self, *exc):
        logging.getLogger("tifffile").removeFilter(self)


def to_float(frames):
    """Convert frames to float32, scaling integer types to [0, 1] by their maximum.

    Parameters
    ----------
    frames : ndarray of shape (..., H, W)

    Returns
    -------
    ndarray of float32, same shape; float input is kept as it is.
    """
    if np.issubdtype(frames.dtype, np.integer):
        return frames.astype(np.float32) / np.float32(np.iinfo(frames.dtype).max)
    return frames.astype(np.float32, copy=False)


def tiff_to_array(path, **options):
    """Read a whole TIFF stack as network input.

    Parameters
    ----------
    path : str or Path
    **options
        Passed to :class:`TiffStack` (``series``, ``channel``, ``z``, ...).

    Returns
    -------
    ndarray of shape (n, H, W, 1), float32
        Integer TIFFs scaled to [0, 1] by their dtype's maximum; float TIFFs as stored.
    """
    with TiffStack(path, **options) as stack:
        return to_float(stack.read())[..., np.newaxis]


def is_tiff(path):
    """True if ``path`` has a TIFF suffix."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES
