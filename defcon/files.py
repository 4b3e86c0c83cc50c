"""Small file helpers shared by every writer: atomic writes and checksums."""

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiskFullError, MissingFileError, OverwriteError

log = logging.getLogger(__name__)

#: What the operating system answers when a write finds no room.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def atomic_path(path, suffix=None):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    If the block raises (including ``KeyboardInterrupt``), the temporary file or
    folder is removed and an existing ``path`` is left untouched.

    Parameters
    ----------
    path : str or Path
        The final file name.
    suffix : str, optional
        Suffix of the temporary name (default: all suffixes of ``path``, e.g.
        ``.weights.h5``, so libraries choosing a format by name still see it).

    Yields
    ------
    Path
        A name in the same folder that does not exist yet.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) if suffix is None else suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    remove_stale_temporaries(path.parent, stem)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{stem}.defcon-{os.getpid()}-", suffix=".tmp" + suffix, dir=path.parent
    )
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(
                f"{path}: the disk is full ({err.strerror}); nothing was "
                "written, free some space and run again"
            ) from err
        raise


def write_json(data, path):
    """Write ``data`` as indented, key-sorted JSON to ``path``, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path, what, error):
    """Parse the JSON file ``path``; an unreadable one raises ``error`` naming ``what``.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is, for the message (e.g. ``"conditions file"``).
    error : type
        The :class:`DefconError` subclass to raise.
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not a readable {what} (JSON): {exc}") from None


def remove_stale_temporaries(folder, stem="*"):
    """Delete temporary outputs left by defcon processes that no longer run.

    Temporary names are ``.<stem>.defcon-<pid>-<random>.tmp<suffix>``; a
    process killed hard (SIGKILL, power loss) cannot remove its own, so the
    next write beside it does.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed = []
    for tmp in Path(folder).glob(f".{stem}.defcon-*-*.tmp*"):
        pid = tmp.name.split(".defcon-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            _remove(tmp)
            removed.append(tmp)
            log.info("removed %s, left by an interrupted defcon process", tmp)
    return removed


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(path):
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def existing_file(path, what="file"):
    """Return ``path`` as a Path, raising :class:`MissingFileError` if it is absent.

    Parameters
    ----------
    path : str or Path
    what : str
        What the file is, for the message (e.g. ``"TIFF stack"``).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: {what} not found")
    return path


def sha256_file(path, chunk_size=1 << 20):
    """Return the hexadecimal SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output(output, inputs=(), *, same_kind=None, overwrite=False, what="output"):
    """Refuse to write ``output`` over an input, or over a file defcon did not write.

    Parameters
    ----------
    output : str or Path
        The file or folder about to be written.
    inputs : iterable of str or Path
        Files the command reads (None entries are skipped).
    same_kind : callable, optional
        ``same_kind(path) -> bool``: whether an existing ``output`` is a file of
        the kind being written (then replacing it is the expected re-run). When
        None, an existing output is replaced only with ``overwrite``.
    overwrite : bool
        Replace an existing output of another kind.
    what : str
        What the output is, for the message.

    Raises
    ------
    OverwriteError
    """
    output = Path(output)
    for source in inputs:
        if source is not None and _same_file(output, Path(source)):
            raise OverwriteError(
                f"{output}: this {what} is also an input of the command "
                f"({source}); choose another path"
            )
    if output.exists() and not overwrite and (same_kind is None or not same_kind(output)):
        raise OverwriteError(
            f"{output}: exists and is not a {what} written by defcon; "
            "remove it or pass --overwrite to replace it"
        )


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def check_free_space(path, needed_bytes, what):
    """Refuse early when the disk holding ``path`` has less room than ``needed_bytes``.

    A full disk in the middle of an HDF5 or TIFF write can crash the process or
    leave a damaged file; checking first turns that into one clear line.

    Raises
    ------
    DiskFullError
        With the bytes needed and free.
    """
    folder, free = _free_space(path)
    if needed_bytes > free:
        raise _disk_full(path, needed_bytes, what, folder, free)


def reserve_space(path, needed_bytes, what, *, reported_as=None):
    """Allocate ``needed_bytes`` of disk at the end of the existing file ``path``.

    HDF5 cannot recover from a full disk in the middle of a write: the library
    is left in a state where the next call on any of its files may crash the
    process, and the file may stay damaged. Writing into blocks allocated
    beforehand cannot run out of room, even when another program fills the
    disk meanwhile. HDF5 appends new data at its own end-of-file mark, which is
    at or before the physical end, so the reserved blocks are the ones it
    fills; HDF5 ignores bytes past its mark and trims them on its next close.

    Parameters
    ----------
    path : str or Path
        An existing file about to grow by about ``needed_bytes``.
    needed_bytes : int
    what : str
        What is being written, for the message.
    reported_as : str or Path, optional
        The name the message gives (e.g. the final name of a temporary file).

    Raises
    ------
    DiskFullError
        The disk (or quota) has less room; nothing was allocated.
    """
    reported_as = path if reported_as is None else reported_as
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: the best we can do
        check_free_space(reported_as, needed_bytes, what)
        return
    fd = os.open(path, os.O_WRONLY)
    try:
        size = os.fstat(fd).st_size
        try:
            os.posix_fallocate(fd, size, max(1, int(needed_bytes)))
        except OSError as err:
            os.ftruncate(fd, size)  # a failed allocation may leave some blocks
            if err.errno in DISK_FULL_ERRNOS:
                raise _disk_full(reported_as, needed_bytes, what, *_free_space(path)) from err
            check_free_space(reported_as, needed_bytes, what)  # no fallocate on this file system
    finally:
        os.close(fd)


@contextlib.contextmanager
def hdf5_space(h5file, needed_bytes, what, *, reported_as=None):
    """Reserve room for writing into an open HDF5 file; give back what was not used.

    See :func:`reserve_space`. On leaving the block the file is cut back to
    the end HDF5 has used, so no unused reservation stays on disk.

    Parameters
    ----------
    h5file : h5py.File
        Open for writing.
    needed_bytes : int
    what : str
    reported_as : str or Path, optional
    """
    reserve_space(h5file.filename, needed_bytes, what, reported_as=reported_as)
    try:
        yield
    finally:
        if h5file.id.valid:
            h5file.flush()
            used = h5file.id.get_filesize()  # HDF5's end-of-file mark, not the disk size
            if os.path.getsize(h5file.filename) > used:
                os.truncate(h5file.filename, used)


def _free_space(path):
    """``(folder, free bytes)`` of the nearest existing folder holding ``path``."""
    folder = Path(path).resolve().parent
    while not folder.exists():
        folder = folder.parent
    return folder, shutil.disk_usage(folder).free


def _disk_full(path, needed_bytes, what, folder, free):
    return DiskFullError(
        f"{path}: writing {what} needs about {needed_bytes / 2**20:,.0f} MiB "
        f"but {folder} has {free / 2**20:,.0f} MiB free"
    )
