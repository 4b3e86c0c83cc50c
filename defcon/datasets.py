"""Training sets: HDF5 files of network inputs, density targets and segmentation maps.

A :class:`TrainingSet` holds three groups, ``input/``, ``target/`` and
``seg_map/``, with one dataset per source under the same name in each group.
:func:`compact_set` merges them into one shuffled, augmented set for training.
Everything streams: frames are read and written in chunks, so stacks and sets
may be larger than RAM.
"""

import contextlib
import datetime
import logging
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from . import __version__, groundtruth, tiffio
from .errors import (
    DuplicateNameError,
    GroundTruthError,
    MissingFileError,
    ParameterError,
    ShapeMismatchError,
    TrainingSetError,
    UnsupportedFileError,
)
from .files import atomic_path, check_output, existing_file, hdf5_space, sha256_file
from .frames import SIDE_MULTIPLE
from .localizations import Localizations
from .progress import progress_bar
from .tiffio import TiffStack, is_tiff, to_float

log = logging.getLogger(__name__)

GROUPS = ("input", "target", "seg_map")
#: Root attribute that marks an HDF5 file as a TrainingSet.
MARKER = "defcon_training_set"
#: Prefix of datasets still being written; they become visible when renamed.
PARTIAL = ".partial-"
#: Bytes of float32 frames processed at once when streaming.
CHUNK_BYTES = 32 << 20
#: Brightness augmentation factor is 10**U(low, high), as in DEFCoN.
AUGMENT_LOG10_RANGE = (-0.5, 1.0)


def _frames_per_chunk(height, width):
    return max(1, CHUNK_BYTES // (4 * height * width))


def _written_bytes(shape, groups):
    """Disk bytes that writing ``groups`` of ``shape = (frames, H, W)`` takes, with margin."""
    n_frames, height, width = shape
    pixel_bytes = sum(1 if g == "seg_map" else 4 for g in groups)
    # Chunk index entries (one chunk per frame) and the datasets' headers.
    return n_frames * (height * width * pixel_bytes + 64 * len(groups)) + (1 << 20)


def _provenance(**extra):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {
        "defcon_version": __version__,
        "created": now,
        **{k: v for k, v in extra.items() if v is not None},
    }


class TrainingSet(h5py.File):
    """An HDF5 file holding a DEFCoN training set.

    Opening creates the groups ``input/``, ``target/`` and ``seg_map/`` in a new
    or empty file. Datasets are ``(frames, H, W, 1)`` float32 for inputs and
    targets and uint8 for segmentation maps, chunked one frame per chunk.

    Parameters
    ----------
    name : str or Path
        The HDF5 file.
    mode : str
        As for ``h5py.File``; default ``'a'`` (read/write, create if missing).
    **kwargs
        Passed to ``h5py.File``.

    Raises
    ------
    UnsupportedFileError
        The file exists but is not HDF5.
    TrainingSetError
        The file is an HDF5 file with other contents.

    Examples
    --------
    >>> with TrainingSet("training.h5") as ts:  # doctest: +SKIP
    ...     ts.add_dataset("sim1", "sim1/stack.tif", "sim1/frame_logger.csv")
    ...     ts.summary()
    """

    def __init__(self, name, mode="a", **kwargs):
        path = Path(name)
        if mode in ("r", "r+") and not path.exists():
            raise MissingFileError(f"{path}: training set not found")
        if path.exists() and path.stat().st_size and not h5py.is_hdf5(path):
            raise UnsupportedFileError(f"{path}: not an HDF5 file, so not a TrainingSet")
        try:
            super().__init__(name, mode, **kwargs)
        except OSError as err:
            raise TrainingSetError(f"{path}: {_hdf5_problem(err)}") from err
        try:
            self._check_layout(path)
        except BaseException:
            self.close()
            raise

    def _check_layout(self, path):
        is_new = len(self.keys()) == 0 and MARKER not in self.attrs
        if not is_new and (MARKER not in self.attrs or not all(g in self for g in GROUPS)):
            found = ", ".join(sorted(self.keys())) or "no groups"
            raise TrainingSetError(
                f"{path}: not a defcon TrainingSet (expected groups input/, target/, seg_map/ "
                f"and the '{MARKER}' attribute; found {found})"
            )
        if self.mode == "r":
            return
        if is_new:
            self.attrs[MARKER] = __version__
            for group in GROUPS:
                self.require_group(group)
        self._remove_partial()

    def _remove_partial(self):
        """Delete datasets left half-written by an interrupted process."""
        for group in GROUPS:
            for name in [n for n in self[group] if n.startswith(PARTIAL)]:
                log.warning("%s: removing incomplete dataset %s/%s", self.filename, group, name)
                del self[group][name]

    # ------------------------------------------------------------------ reading
    def names(self, group="input"):
        """Names of the complete datasets in ``group``, sorted."""
        return sorted(n for n in self[group] if not n.startswith(PARTIAL))

    def lengths(self):
        """Number of frames of every input dataset, as DEFCoN's ``lengths()``.

        Returns
        -------
        list of int
            One entry per dataset of ``input/``, in name order (``self.names()``).
        """
        return [self["input"][n].shape[0] for n in self.names("input")]

    def frame_counts(self):
        """Number of frames of every dataset, by group.

        Returns
        -------
        dict
            ``{group: {name: n_frames}}`` for the groups input, target, seg_map.
        """
        return {g: {n: self[g][n].shape[0] for n in self.names(g)} for g in GROUPS}

    def summary(self):
        """Print the tree of groups and datasets with their shapes and dtypes."""
        print(self._tree())

    def _tree(self):
        lines = []
        for group in GROUPS:
            lines.append(f"{group}/")
            for name in self.names(group):
                data = self[group][name]
                lines.append(f"    {name}: shape = {data.shape}, dtype = {data.dtype}")
        return "\n".join(lines)

    def __repr__(self):
        if not self:
            return "<closed defcon TrainingSet>"
        counts = ", ".join(f"{g}: {len(self.names(g))}" for g in GROUPS)
        return f"<defcon TrainingSet '{self.filename}' ({counts}) mode '{self.mode}'>"

    # ------------------------------------------------------------------ writing
    def add_dataset(
        self,
        name,
        input_file,
        ground_truth,
        brightness_threshold=250,
        sigma=1.0,
        seg_threshold=0.03,
        kernel="integrated",
        progress=False,
        allow_empty=False,
        *,
        stack_options=None,
        ground_truth_format=None,
        pixel_size_nm=None,
    ):
        """Add a TIFF stack with its ground truth (a localization table) as ``name``.

        Writes ``input/name`` (the stack scaled to [0, 1]), ``target/name`` (the
        density map) and ``seg_map/name`` (density > ``seg_threshold``), in
        chunks. All or nothing: on any error, including ``KeyboardInterrupt``,
        none of the three datasets stays and the others are untouched.

        Parameters
        ----------
        name : str
            Dataset name, the same in every group.
        input_file : str or Path
            TIFF stack, ``(frames, H, W)``.
        ground_truth : str, Path or pandas.DataFrame
            Frame-logger CSV (``frame,id,x,y,z,brightness``; frames 1-based) or
            DataFrame, or a ThunderSTORM CSV, Picasso ``*_locs.hdf5`` or DECODE
            emitter table (CSV or HDF5); see docs/formats.md.
        brightness_threshold : float
            Emitters at or below this brightness (photons) are not counted.
        sigma : float
            Standard deviation of each emitter's Gaussian, in pixels.
        seg_threshold : float
            Density above which a pixel is foreground in the segmentation map.
        kernel : {'integrated', 'sampled'}
            How the Gaussian is discretised (see :func:`defcon.groundtruth.density_stack`).
        progress : bool
            Show a progress bar (on a terminal only).
        allow_empty : bool
            Accept a ground truth with no emitter above ``brightness_threshold``
            (by default an error: it usually means a wrong file, threshold or unit).
        stack_options : dict, optional
            Passed to :class:`~defcon.tiffio.TiffStack`, e.g. ``{'channel': 1, 'z': 0}``
            for a hyperstack or ``{'series': 2}``.
        ground_truth_format : {'sass', 'thunderstorm', 'picasso', 'decode'}, optional
            Format of the ground-truth file; default: detected from its header
            or HDF5 structure (see :class:`defcon.localizations.Localizations`).
        pixel_size_nm : float, optional
            Camera pixel size in nm, needed for positions in nm (ThunderSTORM;
            DECODE without ``px_size``); ignored for positions in pixels.

        Raises
        ------
        DuplicateNameError, GroundTruthError, UnsupportedFileError, MissingFileError
        ParameterError
            For an unknown format, a pixel size that is not positive, or either
            with a DataFrame (which must be in frame-logger form).
        """
        self._check_new_name(name)
        if isinstance(ground_truth, pd.DataFrame):
            if ground_truth_format not in (None, "sass") or pixel_size_nm is not None:
                raise ParameterError(
                    "ground_truth_format and pixel_size_nm apply to files; a DataFrame "
                    "must be in frame-logger form (frame 1-based, x, y in pixels, brightness)"
                )
        with TiffStack(input_file, **(stack_options or {})) as stack:
            n_frames, height, width = stack.shape
            m = SIDE_MULTIPLE
            if height % m or width % m:
                raise ShapeMismatchError(
                    f"{stack.path}: frames of {height} x {width} px; training needs heights "
                    f"and widths that are multiples of {m} (two stride-2 layers): crop the "
                    f"stack to {height - height % m} x {width - width % m} first"
                )
            if not isinstance(ground_truth, pd.DataFrame):
                ground_truth = Localizations(ground_truth, ground_truth_format, pixel_size_nm)
                ground_truth.check_stack(stack.path, stack.shape)
            # Compact and sorted by frame; a table is streamed in chunks.
            truth = groundtruth.read_emitters(
                ground_truth, n_frames, height, width, brightness_threshold
            )
            if not allow_empty and not len(truth):
                raise GroundTruthError(
                    f"{truth.label}: no emitter is brighter than the "
                    f"threshold {brightness_threshold:g} (brightest: "
                    f"{'none' if truth.brightest is None else truth.brightest}), so every target "
                    "would be empty; check the file and --brightness-threshold, or pass "
                    "allow_empty=True (--allow-empty) for background-only data"
                )
            params = dict(
                brightness_threshold=brightness_threshold,
                sigma=sigma,
                seg_threshold=seg_threshold,
                kernel=kernel,
            )
            source = _provenance(
                source_file=str(Path(input_file).resolve()),
                source_sha256=sha256_file(stack.path),
                ground_truth=_describe_ground_truth(ground_truth),
                **params,
            )
            with self._writing(name, GROUPS, stack.shape) as out:
                bar = progress_bar(
                    total=n_frames, unit="frame", desc=f"adding {name}", show=progress
                )
                for start, frames in stack.chunks(_frames_per_chunk(height, width)):
                    stop = start + len(frames)
                    density = groundtruth.density_stack(
                        truth,
                        n_frames,
                        height,
                        width,
                        sigma=sigma,
                        brightness_threshold=brightness_threshold,
                        kernel=kernel,
                        frame_range=(start, stop),
                    )
                    out["input"][start:stop] = to_float(frames)[..., None]
                    out["target"][start:stop] = density[..., None]
                    out["seg_map"][start:stop] = groundtruth.segmentation_stack(
                        density, seg_threshold
                    )[..., None]
                    bar.update(len(frames))
                bar.close()
                for data in out.values():
                    data.attrs.update(source)

    def add_input(self, input_file, name=None, input_dataset=None, progress=False):
        """Add network inputs only, from a TIFF stack or an HDF5 dataset.

        Parameters
        ----------
        input_file : str or Path
            TIFF stack, or HDF5 file with ``input_dataset``.
        name : str, optional
            Dataset name (default: the file's stem).
        input_dataset : str, optional
            Path of the dataset inside an HDF5 ``input_file``: ``(frames, H, W)``
            or ``(frames, H, W, 1)``.
        progress : bool
            Show a progress bar (on a terminal only).
        """
        name = name or Path(input_file).stem
        self._copy_frames("input", name, input_file, input_dataset, to_float, progress)

    def add_target(self, input_file, input_dataset, name=None, seg_threshold=0.03, progress=False):
        """Add density targets (and their segmentation maps) from an HDF5 dataset.

        Parameters
        ----------
        input_file : str or Path
            HDF5 file holding density maps.
        input_dataset : str
            Path of the dataset inside the file: ``(frames, H, W)`` or ``(frames, H, W, 1)``.
        name : str, optional
            Dataset name (default: the file's stem).
        seg_threshold : float
            Density above which ``seg_map/name`` is 1.
        progress : bool
            Show a progress bar (on a terminal only).
        """
        name = name or Path(input_file).stem
        self._copy_frames(
            ("target", "seg_map"),
            name,
            input_file,
            input_dataset,
            lambda d: d.astype(np.float32),
            progress,
            seg_threshold,
        )

    def _copy_frames(
        self, groups, name, input_file, input_dataset, convert, progress, seg_threshold=None
    ):
        groups = (groups,) if isinstance(groups, str) else groups
        for group in groups:
            self._check_new_name(name, (group,))
        with _FrameSource(input_file, input_dataset) as (source, shape, sha256):
            attrs = _provenance(
                source_file=str(Path(input_file).resolve()),
                source_dataset=input_dataset,
                source_sha256=sha256,
                seg_threshold=seg_threshold,
            )
            with self._writing(name, groups, shape) as out:
                height, width = shape[1:]
                for start in progress_bar(
                    range(0, shape[0], _frames_per_chunk(height, width)),
                    desc=f"adding {name}",
                    show=progress,
                ):
                    frames = source(start, start + _frames_per_chunk(height, width))
                    stop = start + len(frames)
                    values = convert(frames)
                    out[groups[0]][start:stop] = values[..., None]
                    if "seg_map" in out:
                        out["seg_map"][start:stop] = groundtruth.segmentation_stack(
                            values, seg_threshold
                        )[..., None]
                for data in out.values():
                    data.attrs.update(attrs)

    def _check_new_name(self, name, groups=GROUPS):
        if not name or "/" in name or name.startswith(PARTIAL):
            raise TrainingSetError(f"{self.filename}: invalid dataset name {name!r}")
        for group in groups:
            if name in self[group]:
                raise DuplicateNameError(
                    f"{self.filename}: a dataset named '{name}' already exists in {group}/ "
                    "(choose another name or delete it first)"
                )

    @contextlib.contextmanager
    def _writing(self, name, groups, shape):
        """Create ``groups/name`` under temporary names, on reserved disk space.

        The datasets become visible (renamed) only when the block completes;
        on any exception they are deleted. A disk without room for them is
        refused before anything is written (see :func:`defcon.files.hdf5_space`).

        Yields
        ------
        dict
            ``{group: h5py.Dataset}`` of shape ``(frames, H, W, 1)``.
        """
        n, height, width = shape
        what = f"dataset {name!r} ({n} frames of {height} x {width})"
        with hdf5_space(self, _written_bytes(shape, groups), what):
            partial = {
                g: self[g].create_dataset(
                    PARTIAL + name,
                    shape=(n, height, width, 1),
                    dtype=np.uint8 if g == "seg_map" else np.float32,
                    chunks=(1, height, width, 1),
                )
                for g in groups
            }
            try:
                yield partial
            except BaseException:
                for group in groups:
                    del self[group][PARTIAL + name]
                raise
            for group in groups:
                self[group].move(PARTIAL + name, name)


def _hdf5_problem(err):
    """One line saying why HDF5 could not open a file."""
    text = str(err)
    if "truncated" in text or "signature" in text or "bad object header" in text:
        return "truncated or damaged HDF5 file (an interrupted copy or a full disk?)"
    if "unable to lock" in text.lower():
        return (
            "another process has this file open (HDF5 file locking); close it there, "
            "or wait for it to finish"
        )
    if "ermission" in text or "read-only" in text:
        return "no permission to open it for writing (read-only file or folder)"
    return f"cannot open it as HDF5: {text}"


def _describe_ground_truth(ground_truth):
    if isinstance(ground_truth, Localizations):
        path = ground_truth.path
        return f"{path.resolve()} ({ground_truth.describe()}, sha256 {sha256_file(path)})"
    return "DataFrame"


class _FrameSource:
    """Open a TIFF stack or an HDF5 dataset as ``(read(start, stop), shape, sha256)``."""

    def __init__(self, path, dataset=None):
        self.path = existing_file(path, "input file")
        self._closers = []
        if is_tiff(self.path):
            stack = TiffStack(self.path)
            self._closers.append(stack.close)
            self.read, self.shape = stack.read, stack.shape
        elif h5py.is_hdf5(self.path):
            self._open_hdf5(dataset)
        else:
            raise UnsupportedFileError(
                f"{self.path}: unsupported file type (expected a .tif/.tiff stack or an HDF5 file)"
            )

    def _open_hdf5(self, dataset):
        f = h5py.File(self.path, "r")
        self._closers.append(f.close)
        if dataset is None or dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            found = ", ".join(_dataset_paths(f))
            f.close()
            raise TrainingSetError(
                f"{self.path}: no dataset {dataset!r} (give input_dataset; "
                f"datasets in the file: {found})"
            )
        data = f[dataset]
        shape = data.shape[:-1] if data.ndim == 4 and data.shape[-1] == 1 else data.shape
        if len(shape) != 3:
            f.close()
            raise ShapeMismatchError(
                f"{self.path}:{dataset}: shape {data.shape}; expected "
                "(frames, H, W) or (frames, H, W, 1)"
            )
        self.shape = tuple(shape)
        self.read = lambda start, stop: data[start:stop].reshape((-1,) + self.shape[1:])

    def __enter__(self):
        return self.read, self.shape, sha256_file(self.path)

    def __exit__(self, *exc):
        for close in self._closers:
            close()


def _dataset_paths(f):
    paths = []
    f.visititems(lambda name, obj: paths.append(name) if isinstance(obj, h5py.Dataset) else None)
    return paths or ["none"]


# ------------------------------------------------------------------- compact_set
def is_compact_set(path):
    """True if ``path`` is an HDF5 compact set (as written by :func:`compact_set`)."""
    try:
        with h5py.File(path, "r") as f:
            return all(f"{g}/{g}" in f for g in GROUPS)
    except (OSError, ValueError):
        return False


def compact_set(
    training_set,
    output_file,
    shuffle=False,
    augment=False,
    seed=None,
    progress=False,
    temporal=False,
):
    """Merge every dataset of a TrainingSet into one dataset per group.

    Writes ``input/input``, ``target/target`` and ``seg_map/seg_map`` to a new
    file, streaming in chunks (peak memory does not grow with the set). The
    file is written under a temporary name and renamed when complete.

    Parameters
    ----------
    training_set : TrainingSet, str or Path
        The set to merge (only datasets present in all three groups are used).
    output_file : str or Path
        The compact set to write (replaced if it exists).
    shuffle : bool
        Shuffle frames; one permutation is shared by all groups, so inputs,
        targets and maps stay aligned.
    augment : bool
        Multiply each input frame by a random brightness factor
        ``10**U(-0.5, 1.0)``, clipped to [0, 1], as in DEFCoN.
    seed : int, optional
        Seed of the shuffle and the augmentation.
    progress : bool
        Show a progress bar (on a terminal only).
    temporal : bool
        DEFCoN's option for its 3-D network; only False is accepted.

    Returns
    -------
    Path
        ``output_file``.

    Raises
    ------
    ShapeMismatchError
        Datasets have different frame sizes, or a source's groups disagree.
    TrainingSetError
        The set holds no complete dataset.
    OverwriteError
        ``output_file`` is the training set itself.
    TrainingSetError
        ``temporal=True`` (DEFCoN's frame triplets for its 3-D network are not
        supported), or a bool ``seed`` (DEFCoN's fifth argument was ``temporal``).
    """
    if temporal:
        raise TrainingSetError(
            "compact_set(temporal=True): temporal stacks (frame triplets "
            "for DEFCoN's 3-D network) are not supported; use temporal=False"
        )
    if isinstance(seed, bool):
        raise TrainingSetError(
            f"compact_set: seed={seed} is not a seed; DEFCoN's fifth "
            "argument was temporal: pass temporal=... and seed=... by name"
        )
    source = training_set.filename if isinstance(training_set, TrainingSet) else training_set
    check_output(output_file, [source], same_kind=lambda path: True, what="compact set")
    if isinstance(training_set, TrainingSet):
        return _compact(training_set, output_file, shuffle, augment, seed, progress)
    with TrainingSet(training_set, "r") as ts:
        return _compact(ts, output_file, shuffle, augment, seed, progress)


def _compact(ts, output_file, shuffle, augment, seed, progress):
    names, frame_shape = _compatible_sources(ts)
    lengths = [ts["input"][n].shape[0] for n in names]
    total = sum(lengths)
    rng = np.random.default_rng(seed)
    # destination[i] is where global source frame i goes.
    destination = rng.permutation(total) if shuffle else np.arange(total)
    chunk = _frames_per_chunk(*frame_shape)
    output_file = Path(output_file)
    with (
        atomic_path(output_file) as tmp,
        h5py.File(tmp, "w") as out,
        hdf5_space(
            out,
            _written_bytes((total,) + frame_shape, GROUPS),
            f"a compact set of {total} frames",
            reported_as=output_file,
        ),
    ):
        out.attrs[MARKER] = __version__
        out.attrs.update(
            _provenance(
                source_file=str(Path(ts.filename).resolve()),
                shuffle=shuffle,
                augment=augment,
                seed=-1 if seed is None else seed,
            )
        )
        out.attrs["sources"] = ", ".join(f"{n} ({k} frames)" for n, k in zip(names, lengths))
        written = {
            g: out.create_group(g).create_dataset(
                g,
                shape=(total,) + frame_shape + (1,),
                chunks=(1,) + frame_shape + (1,),
                dtype=ts[g][names[0]].dtype,
            )
            for g in GROUPS
        }
        bar = progress_bar(total=total, unit="frame", desc="compacting", show=progress)
        offset = 0
        for name, length in zip(names, lengths):
            for start in range(0, length, chunk):
                stop = min(start + chunk, length)
                where = destination[offset + start : offset + stop]
                order = np.argsort(where)
                block = {g: ts[g][name][start:stop] for g in GROUPS}
                if augment:
                    block["input"] = _augment(block["input"], rng)
                for g in GROUPS:
                    _write_rows(written[g], where[order], block[g][order])
                bar.update(stop - start)
            offset += length
        bar.close()
    return output_file


def _compatible_sources(ts):
    names = [n for n in ts.names("input") if all(n in ts.names(g) for g in GROUPS[1:])]
    if not names:
        raise TrainingSetError(
            f"{ts.filename}: no dataset present in all of input/, target/ "
            "and seg_map/ - nothing to compact"
        )
    frame_shape = ts["input"][names[0]].shape[1:3]
    for name in names:
        shapes = {g: ts[g][name].shape for g in GROUPS}
        if len(set(shapes.values())) != 1:
            raise ShapeMismatchError(
                f"{ts.filename}: dataset '{name}' has shapes {shapes} in "
                "its groups; they must agree"
            )
        if shapes["input"][1:3] != frame_shape:
            raise ShapeMismatchError(
                f"{ts.filename}: frame sizes differ: '{names[0]}' has {frame_shape}, "
                f"'{name}' has {shapes['input'][1:3]}; a compact set needs one frame size"
            )
    return names, tuple(frame_shape)


def _augment(frames, rng):
    low, high = AUGMENT_LOG10_RANGE
    factor = 10.0 ** rng.uniform(low, high, size=(len(frames), 1, 1, 1))
    return np.clip(frames * factor.astype(np.float32), 0.0, 1.0)


def _write_rows(dataset, rows, values):
    """Write ``values[k]`` to ``dataset[rows[k]]``; ``rows`` sorted ascending."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        dataset[rows[0] : rows[-1] + 1] = values
        return
    for row, value in zip(rows, values):
        dataset[row] = value


def tiff_to_array(input_file, normalize=True, **options):
    """Read a whole TIFF stack as network input (DEFCoN's ``datasets.tiff_to_array``).

    Reads the whole stack into memory; to stream, use :class:`defcon.tiffio.TiffStack`.

    Parameters
    ----------
    input_file : str or Path
    normalize : bool
        Scale integer TIFFs to [0, 1] by their dtype's maximum (float TIFFs are
        kept as stored); False gives the raw values as floats.
    **options
        Passed to :class:`defcon.tiffio.TiffStack` (``series``, ...).

    Returns
    -------
    ndarray of shape (n, H, W, 1), float32
    """
    if normalize:
        return tiffio.tiff_to_array(input_file, **options)
    with TiffStack(input_file, **options) as stack:
        return stack.read().astype(np.float32)[..., np.newaxis]
