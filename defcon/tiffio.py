"""Reading TIFF stacks frame by frame, in bounded memory.

Stacks may be larger than RAM, so nothing here reads a whole file unless asked
to: :class:`TiffStack` reads ranges of frames, from a memory map when the file
is uncompressed and contiguous, else page by page.
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
        Not a TIFF, empty, RGB, more than 3-D, or an unsupported pixel type.

    Examples
    --------
    >>> with TiffStack("stack.tif") as stack:
    ...     for start, frames in stack.chunks(256):
    ...         process(to_float(frames))
    """

    def __init__(self, path):
        self.path = existing_file(path, "TIFF stack")
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
        series = self._tif.series[0]
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
        n_frames = int(np.prod(frames)) if frames else 1
        dtype = np.dtype(series.dtype)
        if dtype.name not in SUPPORTED_DTYPES:
            raise UnsupportedFileError(f"{self.path}: pixel type {dtype} is not supported "
                                       f"(supported: {', '.join(SUPPORTED_DTYPES)})")
        return (n_frames, shape[-2], shape[-1]), dtype, series

    def _try_memmap(self):
        """Map uncompressed contiguous pixel data; None when pages must be read."""
        offset = self._series.dataoffset
        if offset is None:
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
        """
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        if self._memmap is not None:
            frames = self._memmap[start:stop].astype(self.dtype.newbyteorder("="))
            self._release_pages()
            return frames
        if self.shape[0] == 1:
            return self._series.asarray().reshape(self.shape)[start:stop]
        pages = self._tif.asarray(key=range(start, stop), series=0)
        return pages.reshape((stop - start,) + self.shape[1:])

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
