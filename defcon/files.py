"""Small file helpers shared by every writer: atomic writes and checksums."""

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiskFullError, MissingFileError, OverwriteError

log = logging.getLogger(__name__)


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
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.defcon-{os.getpid()}-",
                               suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


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
            raise OverwriteError(f"{output}: this {what} is also an input of the command "
                                 f"({source}); choose another path")
    if output.exists() and not overwrite and (same_kind is None or not same_kind(output)):
        raise OverwriteError(f"{output}: exists and is not a {what} written by defcon; "
                             "remove it or pass --overwrite to replace it")


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
    folder = Path(path).resolve().parent
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise DiskFullError(f"{path}: writing {what} needs about {needed_bytes / 2**20:,.0f} MiB "
                            f"but {folder} has {free / 2**20:,.0f} MiB free")
