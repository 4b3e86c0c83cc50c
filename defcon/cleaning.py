"""Removing what interrupted defcon processes left behind (``defcon clean``).

Two kinds of leftovers exist: hidden temporary files of a process killed hard
(every atomic write goes through one, see :func:`defcon.files.atomic_path`),
and incomplete datasets inside a TrainingSet whose ``build`` was killed. Each
later write in the same folder, or opening the TrainingSet for writing, removes
them anyway; cleaning does it at once.
"""

from pathlib import Path

import h5py

from .datasets import GROUPS, MARKER, PARTIAL, TrainingSet
from .errors import DefconError, MissingFileError
from .files import remove_stale_temporaries


def clean(folders, recursive=False):
    """Remove stale temporaries and incomplete TrainingSet datasets in ``folders``.

    Parameters
    ----------
    folders : iterable of str or Path
    recursive : bool
        Also clean every sub-folder.

    Returns
    -------
    list of str
        What was removed, one description each.

    Raises
    ------
    MissingFileError
        A folder does not exist.
    """
    removed = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise MissingFileError(f"{folder}: folder not found")
        tree = [folder] + ([p for p in folder.rglob("*") if p.is_dir()] if recursive else [])
        for where in tree:
            removed += [str(path) for path in remove_stale_temporaries(where)]
            removed += [
                f"{path}: {name}"
                for path in sorted(where.glob("*.h5"))
                for name in _remove_partial_datasets(path)
            ]
    return removed


def _remove_partial_datasets(path):
    """Names of the incomplete datasets removed from the TrainingSet ``path``."""
    try:
        with h5py.File(path, "r") as f:
            if MARKER not in f.attrs:
                return []
            partial = [f"{g}/{n}" for g in GROUPS if g in f for n in f[g] if n.startswith(PARTIAL)]
    except OSError:  # not HDF5, damaged, or open for writing elsewhere: not ours to touch
        return []
    if partial:
        try:
            TrainingSet(path, "a").close()  # opening for writing removes them
        except DefconError:
            return []
    return partial
