"""Reading TIFF stacks frame by frame, in bounded memory.

Stacks may be larger than RAM, so nothing here reads a whole file unless asked
to: :class:`TiffStack` reads ranges of frames, from a memory map when the file
is uncompressed and contiguous, else page by page.

Every frame of a file is read or the read fails loudly: a file written in
several parts (several series, e.g. one ``write()`` per frame) is one stack of
all its series; a truncated file is an error naming the last complete frame;
NaN or infinite pixels are an error naming the frames.
"""

import logging
import mmap
from pathlib import Path

import numpy as np
import tifffile

from .errors import UnsupportedFileError
from .files import existing_file

log = logging.getLogger(__name__)

#: Pixel types read as they are stored; integers are scaled to [0, 1] by :func:`to_float`.
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
TIFF_SUFFIXES = (".tif", ".tiff")


class TiffStack:
    """A single-channel TIFF stack opened for reading ranges of frames.

    Parameters
    ----------
    path : str or Path
        A TIFF file holding one image or a stack of 2-D grey-level frames.
    series : int, optional
        Read only this series (0-based) of a file holding several; by default
        all series, in order, when their frames have one shape and type.

    Attributes
    ----------
    path : Path
    shape : tuple of int
        ``(frames, height, width)``.
    dtype : numpy.dtype
        The stored pixel type.

    Raises
    ------
    MissingFileError
        The file does not exist.
    UnsupportedFileError
        Not a TIFF, empty, RGB, more than 3-D, an unsupported pixel type, series
        of different frame shapes, or truncated (the message names the last
        complete frame).

    Examples
    --------
    >>> with TiffStack("stack.tif") as stack:
    ...     for start, frames in stack.chunks(256):
    ...         process(to_float(frames))
    """

    def __init__(self, path, series=None):
        self.path = existing_file(path, "TIFF stack")
        self._series_index = series
        try:
            self._tif = tifffile.TiffFile(self.path)
        except (tifffile.TiffFileError, ValueError, OSError) as err:
            raise UnsupportedFileError(f"{self.path}: not a readable TIFF file ({err})") from err
        try:
            self.shape, self.dtype, self._series = self._inspect()
            self._memmap = self._try_memmap()
        except BaseException:
            self._tif.close()
            raise

    def _inspect(self):
        if not self._tif.series or not self._tif.pages:
            raise UnsupportedFileError(f"{self.path}: empty TIFF (no images)")
        all_series = list(self._tif.series)
        if self._series_index is not None:
            if not 0 <= self._series_index < len(all_series):
                raise UnsupportedFileError(f"{self.path}: no series {self._series_index} (the "
                                           f"file holds {len(all_series)})")
            all_series = [all_series[self._series_index]]
        parts = [self._check_series(series) for series in all_series]
        shapes = {(h, w, dtype) for _, h, w, dtype in parts}
        if len(shapes) > 1:
            listing = "; ".join(f"series {i}: {n} x {h} x {w} {dtype}"
                                for i, (n, h, w, dtype) in enumerate(parts))
            raise UnsupportedFileError(
                f"{self.path}: its series have different frame shapes or types ({listing}); "
                "choose one with TiffStack(path, series=N)")
        (height, width, dtype), = shapes
        self._parts = [(series, n) for series, (n, *_) in zip(all_series, parts)]
        n_frames = sum(n for _, n in self._parts)
        declared = self._declared_frames()
        if self._series_index is None and declared is not None and n_frames < declared:
            page = self._tif.pages.first
            complete = n_frames
            if page.is_contiguous:  # frames follow each other: the file size tells
                frame_bytes = height * width * dtype.itemsize
                complete = (self.path.stat().st_size - page.dataoffsets[0]) // frame_bytes
            self._truncated(declared, min(complete, declared))
        return (n_frames, height, width), dtype, all_series[0]

    def _declared_frames(self):
        """Frames the file's ImageJ or tifffile metadata declares, or None."""
        tif = self._tif
        if tif.is_imagej and tif.imagej_metadata:
            return int(tif.imagej_metadata.get("images", 1))
        if tif.is_shaped and tif.shaped_metadata:
            shapes = [m.get("shape") for m in tif.shaped_metadata]
            if all(shapes):
                return sum(int(np.prod(shape[:-2])) for shape in shapes)
        return None

    def _check_series(self, series):
        """``(frames, height, width, dtype)`` of one grey-level series, or raise."""
        if series.size == 0:
            raise UnsupportedFileError(f"{self.path}: empty TIFF (no pixels)")
        axes = series.axes
        if "S" in axes or series.keyframe.photometric in (tifffile.PHOTOMETRIC.RGB,):
            raise UnsupportedFileError(
                f"{self.path}: RGB/multi-sample TIFF (axes {axes}, shape {series.shape}); "
                "expected grey-level frames - convert to 8/16/32-bit grey first")
        shape = tuple(int(n) for n in series.shape)
        frames = shape[:-2]
        if len([n for n in frames if n > 1]) > 1:
            raise UnsupportedFileError(
                f"{self.path}: a {len(shape)}-D image (axes {axes}, shape {shape}); expected a "
                "single 2-D image or a stack of 2-D frames (split channels/z/time first)")
        dtype = np.dtype(series.dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise UnsupportedFileError(f"{self.path}: pixel type {dtype} is not supported "
                                       f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        n_frames = int(np.prod(frames)) if frames else 1
        self._check_complete(series, n_frames, shape[-2] * shape[-1] * dtype.itemsize)
        return n_frames, shape[-2], shape[-1], dtype

    def _check_complete(self, series, n_frames, frame_bytes):
        """Raise when the file ends before the series' last frame."""
        offset, size = series.dataoffset, self.path.stat().st_size
        if offset is not None:
            complete = max(0, (size - offset) // frame_bytes)
        elif len(series.pages) < n_frames or any(p is None for p in series.pages):
            complete = sum(1 for p in series.pages if p is not None)
        else:
            last = series.pages[n_frames - 1]
            end = max(o + c for o, c in zip(last.dataoffsets, last.databytecounts))
            complete = n_frames if end <= size else n_frames - 1
        if complete < n_frames:
            self._truncated(n_frames, complete)

    def _truncated(self, declared, complete):
        raise UnsupportedFileError(
            f"{self.path}: truncated or damaged file: it declares {declared} frames but ends "
            f"after frame {complete} (1-based; the last complete frame)")

    def _try_memmap(self):
        """Map uncompressed contiguous pixel data; None when pages must be read."""
        offset = self._series.dataoffset
        if offset is None or len(self._parts) > 1:
            return None  # compressed or scattered pages: read page by page
        self._file = open(self.path, "rb")
        self._mapping = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        dtype = self.dtype.newbyteorder(self._tif.byteorder)
        return np.frombuffer(self._mapping, dtype, count=int(np.prod(self.shape)),
                             offset=offset).reshape(self.shape)

    def _release_pages(self):
        # Pages read through the map would otherwise count in the process's
        # resident memory and grow with the stack; they stay in the page cache.
        if hasattr(mmap, "MADV_DONTNEED"):
            self._mapping.madvise(mmap.MADV_DONTNEED)

    def __len__(self):
        return self.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the file and its memory map."""
        if self._memmap is not None:
            self._memmap = None
            self._mapping.close()
            self._file.close()
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
            A frame holds NaN or infinite pixels (the message names them).
        """
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        if self._memmap is not None:
            frames = self._memmap[start:stop].astype(self.dtype.newbyteorder("="))
            self._release_pages()
        else:
            frames = np.concatenate(list(self._read_parts(start, stop))) if stop > start else \
                np.empty((0,) + self.shape[1:], self.dtype)
        if frames.dtype.kind == "f":
            bad = ~np.isfinite(frames).all(axis=(1, 2))
            if bad.any():
                numbers = ", ".join(str(start + i + 1) for i in np.flatnonzero(bad)[:10])
                raise UnsupportedFileError(
                    f"{self.path}: frame(s) {numbers} (1-based) hold NaN or infinite pixels; "
                    "counts there would be meaningless")
        return frames

    def _read_parts(self, start, stop):
        """Frames ``start:stop`` across the file's series, piece by piece."""
        first = 0
        for series, n in self._parts:
            a, b = max(start, first) - first, min(stop, first + n) - first
            if a < b:
                shape = (b - a,) + self.shape[1:]
                if n == 1:
                    yield series.asarray().reshape(shape)
                else:
                    yield self._tif.asarray(key=range(a, b), series=series).reshape(shape)
            first += n

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


def tiff_to_array(path):
    """Read a whole TIFF stack as network input.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    ndarray of shape (n, H, W, 1), float32
        Integer TIFFs scaled to [0, 1] by their dtype's maximum; float TIFFs as stored.
    """
    with TiffStack(path) as stack:
        return to_float(stack.read())[..., np.newaxis]


def is_tiff(path):
    """True if ``path`` has a TIFF suffix."""
    return Path(path).suffix.lower() in TIFF_SUFFIXES
