"""Counting many stacks at once, on the cores of one machine or a Dask cluster.

:func:`count_stacks` counts every stack with :func:`~defcon.predict.count_tiff`,
exactly as ``defcon predict STACK`` does, one Dask task per stack, and writes a
summary CSV of all of them. Without a scheduler address, a local cluster of
worker processes sized to the machine is started and closed; with one, the
tasks run on that cluster's workers (which must see the stacks, the model and
the output folders under the same paths, and have defcon installed).

Each worker process loads the model once and keeps it for its next stacks. A
stack whose file is bad (a :class:`~defcon.errors.DefconError`: truncated,
not a TIFF, ...) fails without a retry, since it would fail again; any other
error (a worker lost, memory, ...) is retried ``retries`` times. Failed stacks
are reported in the results and the summary; the other stacks are counted.

Dask is optional (``pip install "defcon[dask]"``); without it, stacks are
counted one after another in this process.
"""

import collections
import contextlib
import csv
import dataclasses
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .backends import check_device
from .errors import (
    DefconError,
    MissingFileError,
    OverwriteError,
    ParameterError,
)
from .files import atomic_path, check_output
from .progress import progress_bar
from .tiffio import TIFF_SUFFIXES

log = logging.getLogger(__name__)

#: Columns of the summary CSV, one row per stack.
SUMMARY_COLUMNS = (
    "path",
    "status",
    "frames",
    "total_count",
    "mean_count",
    "max_local_count",
    "flags",
    "seconds",
    "error",
)
#: Default summary file, in the current folder.
DEFAULT_SUMMARY = "defcon_summary.csv"
#: Keywords of :func:`~defcon.predict.count_tiff` that :func:`count_stacks` passes on.
COUNT_OPTIONS = (
    "index",
    "box_size",
    "batch_size",
    "precision",
    "tile_size",
    "check_envelope",
    "stack_options",
    "plot",
)
INSTALL_HINT = 'pip install "defcon[dask]"'


@dataclasses.dataclass(frozen=True, eq=False)
class StackResult:
    """The outcome of counting one stack.

    Attributes
    ----------
    path : Path
        The stack (absolute).
    counts : StackCounts or None
        What :func:`~defcon.predict.count_tiff` returned; None when it failed.
    error : str
        Why the stack failed ('' when it was counted).
    seconds : float or None
        Wall time of the task on its worker (the first task of a worker
        includes loading the model); None when the worker was lost.
    """

    path: Path
    counts: object
    error: str
    seconds: float | None

    @property
    def ok(self):
        """True when the stack was counted."""
        return self.counts is not None

    def row(self):
        """The stack's row of the summary CSV: strings, in ``SUMMARY_COLUMNS`` order."""
        seconds = "" if self.seconds is None else f"{self.seconds:.2f}"
        if not self.ok:
            return (str(self.path), "failed", "", "", "", "", "", seconds, self.error)
        result = self.counts
        counted = result.counts[result.counted]
        local = result.max_local_counts[result.counted]
        numbers = (
            (f"{counted.sum():.4f}", f"{counted.mean():.4f}", f"{local.max():.4f}")
            if len(counted)
            else ("", "", "")
        )
        return (
            str(self.path),
            "ok",
            str(len(result.frames)),
            *numbers,
            flag_summary(result.flags),
            seconds,
            "",
        )


def count_stacks(
    model,
    stacks,
    *,
    scheduler=None,
    n_workers=None,
    out_dir=None,
    summary=DEFAULT_SUMMARY,
    recursive=False,
    retries=1,
    progress=False,
    overwrite=False,
    device=None,
    **count_options,
):
    """Count the emitters of every frame of many TIFF stacks, in parallel with Dask.

    Every stack gets ``STACK_counts.csv`` beside it, as ``defcon predict
    STACK`` writes, byte for byte; outputs are checked (never over an input,
    nor over a file defcon did not write) before anything is counted.

    Parameters
    ----------
    model : str or Path
        A model file, or the name of a shipped model (``pretrained``), that
        every worker loads once (an in-memory FCN cannot be sent to workers).
    stacks : str, Path or sequence of them
        TIFF stacks and folders; a folder stands for its ``*.tif``/``*.tiff``
        files, sorted (see :func:`stack_paths`).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``). Default: a
        local cluster of ``n_workers`` processes, started and closed here.
    n_workers : int, optional
        Worker processes of the local cluster (default: one per two cores, at
        most one per stack); each runs one stack at a time with TensorFlow
        limited to ``cores // n_workers`` threads. Without ``scheduler`` and
        ``n_workers``, a single stack is counted in this process, no cluster started.
    out_dir : str or Path, optional
        Also write the density maps of every stack to ``out_dir/<stem>_density.tif``.
    summary : str or Path or None
        Summary CSV of all stacks (``SUMMARY_COLUMNS``), written atomically;
        None writes none.
    recursive : bool
        Also take the TIFF files in the subfolders of folders.
    retries : int
        Times a task is run again after an error that is not a DefconError.
    progress : bool
        Show a progress bar over stacks (on a terminal only).
    overwrite : bool
        Replace existing outputs that defcon did not write.
    device : {'cpu', 'gpu'} or None
        Where each task runs the network (:func:`defcon.backends.device_scope`,
        in the worker); None: the backend's default there.
    **count_options
        Passed to :func:`~defcon.predict.count_tiff`: ``index``, ``box_size``,
        ``batch_size``, ``precision``, ``tile_size``, ``check_envelope``,
        ``stack_options``; ``plot=True`` also writes ``STACK_counts.png``
        beside every counts CSV (checked when its stack is counted).

    Returns
    -------
    list of StackResult
        One per stack, in the order of :func:`stack_paths`.

    Raises
    ------
    MissingFileError
        A stack, folder or the model file does not exist, or a folder holds no TIFF.
    OverwriteError
        An output would replace an input, another stack's output, or a file
        defcon did not write.
    DefconError
        ``scheduler`` or ``n_workers`` was given but Dask is not installed, or
        the scheduler cannot be reached.
    ParameterError
        An unknown keyword.
    """
    unknown = sorted(set(count_options) - set(COUNT_OPTIONS))
    if unknown:
        raise ParameterError(
            f"count_stacks: unknown keyword(s) {', '.join(unknown)}; "
            f"expected {', '.join(COUNT_OPTIONS)}"
        )
    if count_options.get("plot") not in (None, False, True):
        raise ParameterError("count_stacks: plot is True or False (one PNG beside each CSV)")
    if scheduler is not None and n_workers is not None:
        raise ParameterError("n_workers sizes a local cluster: not with a scheduler address")
    if n_workers is not None and int(n_workers) < 1:
        raise ParameterError(f"n_workers must be at least 1, got {n_workers}")
    check_device(device)
    model = _model_reference(model)
    paths = stack_paths(stacks, recursive=recursive)
    jobs = _plan(model, paths, out_dir, summary, overwrite)
    options = {**count_options, "overwrite": overwrite}
    dask = _dask_available()
    if (scheduler is not None or n_workers is not None) and not dask:
        raise DefconError(f"counting on Dask workers needs Dask: {INSTALL_HINT}")
    if scheduler is None and (not dask or (len(jobs) == 1 and n_workers is None)):
        if len(jobs) > 1:
            log.warning(
                "Dask is not installed: counting %d stacks one after another (%s to "
                "count them in parallel)",
                len(jobs),
                INSTALL_HINT,
            )
        results = _count_serial(model, jobs, options, device, progress)
    else:
        results = _count_dask(model, jobs, options, device, scheduler, n_workers, retries, progress)
    if summary is not None:
        write_summary(results, summary)
    return results


def stack_paths(inputs, recursive=False):
    """The TIFF stacks named by files and folders, absolute, without repeats.

    Parameters
    ----------
    inputs : str, Path or sequence of them
        Files are taken as given (whatever their suffix); a folder stands for
        its ``.tif``/``.tiff`` files (any case), sorted by name, except hidden
        files, defcon's own density outputs and the companion files of a
        multi-file OME-TIFF (read from its first file).
    recursive : bool
        Also look into the subfolders of folders.

    Returns
    -------
    list of Path

    Raises
    ------
    MissingFileError
        An input does not exist, or a folder holds no TIFF file.
    """
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found = []
    for item in map(Path, inputs):
        if item.is_dir():
            tiffs = _folder_stacks(item, recursive)
            if not tiffs:
                where = "or its subfolders " if recursive else ""
                raise MissingFileError(f"{item}: no .tif or .tiff file in this folder {where}")
            found += tiffs
        elif item.exists():
            found.append(item)
        else:
            raise MissingFileError(f"{item}: TIFF stack or folder not found")
    return list(dict.fromkeys(p.resolve() for p in found))


def counts_path(stack):
    """``STACK_counts.csv`` beside ``stack``, as ``defcon predict`` writes it."""
    stack = Path(stack)
    return stack.with_name(stack.stem + "_counts.csv")


def density_path(stack, out_dir):
    """``out_dir/<stem>_density.tif`` for ``stack``."""
    return Path(out_dir) / (Path(stack).stem + "_density.tif")


def flag_summary(flags):
    """``'psf_wide:32;nan_pixels:1'``: frames per flag, in order of first appearance.

    Parameters
    ----------
    flags : sequence of str, length N
        The counts CSV's ``flag`` column ('' or flags joined by '+').

    Examples
    --------
    >>> flag_summary(["", "psf_wide", "psf_wide+too_dense", "nan_pixels"])
    'psf_wide:2;too_dense:1;nan_pixels:1'
    """
    tally = collections.Counter(f for frame in flags for f in frame.split("+") if f)
    return ";".join(f"{flag}:{n}" for flag, n in tally.items())


def write_summary(results, path):
    """Write the summary CSV of ``results`` (``SUMMARY_COLUMNS``) to ``path``, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        table = csv.writer(f)
        table.writerow(SUMMARY_COLUMNS)
        table.writerows(r.row() for r in results)


def is_summary_csv(path):
    """True if ``path`` is a summary CSV written by :func:`write_summary`."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") == ",".join(SUMMARY_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


# ------------------------------------------------------------------- planning
@dataclasses.dataclass(frozen=True)
class _Job:
    stack: Path
    counts: Path
    density: Path | None


def _model_reference(model):
    """An absolute model path workers can open, or a shipped model's name."""
    from .resources import shipped_model_file

    if not isinstance(model, (str, os.PathLike)):
        raise ParameterError(
            "count_stacks: model must be a model file or a shipped model's name, "
            f"not {type(model).__name__} (save it first: workers load it from disk)"
        )
    path = Path(model)
    if path.exists():
        return str(path.resolve())
    if shipped_model_file(str(model)) is not None:
        return str(model)
    raise MissingFileError(f"{model}: model file not found")


def _folder_stacks(folder, recursive):
    from .predict import is_density_output

    pattern = "**/*" if recursive else "*"
    tiffs = sorted(
        p
        for p in folder.glob(pattern)
        if p.suffix.lower() in TIFF_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    companions = set()
    for path in tiffs:
        if path not in companions:
            companions |= _ome_companions(path)
    kept = [p for p in tiffs if p not in companions and not is_density_output(p)]
    if len(kept) < len(tiffs):
        log.info(
            "%s: %d file(s) skipped (defcon density outputs, companions of multi-file OME-TIFFs)",
            folder,
            len(tiffs) - len(kept),
        )
    return kept


def _ome_companions(path):
    """The other files of a multi-file OME-TIFF whose OME-XML ``path`` holds."""
    if not path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return set()
    from xml.etree import ElementTree

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            root = ElementTree.fromstring(tif.ome_metadata or "")
    except (OSError, ValueError, TypeError, ElementTree.ParseError):
        return set()  # counting it will say what is wrong
    uuids = (e for e in root.iter() if e.tag.endswith("UUID"))
    names = {e.attrib["FileName"] for e in uuids if "FileName" in e.attrib}
    return {path.parent / n for n in names} - {path}


def _plan(model, stacks, out_dir, summary, overwrite):
    """The outputs of every stack, checked before any work starts.

    Raises
    ------
    OverwriteError
        Two stacks would write one file, or an output is refused by
        :func:`~defcon.files.check_output`.
    """
    from .predict import check_density_output, is_counts_csv

    model_file = model if Path(model).exists() else None
    jobs = [
        _Job(s, counts_path(s), None if out_dir is None else density_path(s, out_dir).resolve())
        for s in stacks
    ]
    _refuse_shared_outputs([j.density for j in jobs if j.density is not None], stacks)
    inputs = [*stacks, model_file]
    for job in jobs:
        if job.density is not None:
            check_density_output(job.density, inputs, overwrite=overwrite)
        check_output(
            job.counts, inputs, same_kind=is_counts_csv, overwrite=overwrite, what="counts CSV"
        )
    if summary is not None:
        outputs = [p for j in jobs for p in (j.counts, j.density) if p is not None]
        check_output(
            summary,
            inputs + outputs,
            same_kind=is_summary_csv,
            overwrite=overwrite,
            what="summary CSV",
        )
    return jobs


def _refuse_shared_outputs(outputs, stacks):
    seen = {}
    for output, stack in zip(outputs, stacks):
        if output in seen:
            raise OverwriteError(
                f"{output}: both {seen[output]} and {stack} would write it (stacks "
                "of one name in several folders); count them into separate --out-dir folders"
            )
        seen[output] = stack


# ------------------------------------------------------------------- counting
def _count_serial(model, jobs, options, device, progress):
    """Count the stacks one after another in this process."""
    results = []
    with progress_bar(total=len(jobs), unit="stack", show=progress, desc="stacks") as bar:
        for job in jobs:
            results.append(_count_task(model, job, options, device))
            bar.update()
    return results


def _count_dask(model, jobs, options, device, scheduler, n_workers, retries, progress):
    """Count the stacks as Dask tasks, one per stack; results in the order of ``jobs``."""
    from distributed import as_completed

    with _dask_client(scheduler, n_workers, len(jobs)) as (client, threads):
        futures = [
            client.submit(
                _count_task,
                model,
                job,
                options,
                device,
                threads,
                key=f"defcon-count-{k}-{os.getpid()}-{time.time_ns()}",
                retries=int(retries),
                pure=False,
            )
            for k, job in enumerate(jobs)
        ]
        index = {f.key: k for k, f in enumerate(futures)}
        results = [None] * len(jobs)
        try:
            with progress_bar(total=len(jobs), unit="stack", show=progress, desc="stacks") as bar:
                for future in as_completed(futures):
                    k = index[future.key]
                    results[k] = _collect(future, jobs[k])
                    bar.update()
        finally:
            client.cancel([f for f in futures if not f.done()])
    return results


def _collect(future, job):
    """The StackResult of a finished future; an error the task raised becomes a failure."""
    if future.status == "finished":
        return future.result()
    if future.status == "error":
        error = future.exception()
        return StackResult(job.stack, None, f"{type(error).__name__}: {error}", None)
    return StackResult(job.stack, None, f"Dask task {future.status}", None)


@contextlib.contextmanager
def _dask_client(scheduler, n_workers, n_stacks):
    """Yield ``(client, TensorFlow threads per task or None)``; close what was started.

    Raises
    ------
    DefconError
        The scheduler cannot be reached.
    """
    from distributed import Client, LocalCluster

    with _log_level("distributed", logging.ERROR):  # its INFO notes are for cluster admins
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout="30s")
            except (OSError, TimeoutError) as err:
                raise DefconError(
                    f"cannot reach the Dask scheduler at {scheduler}: {err}"
                ) from None
            with client:
                yield client, None
            return
        cores = os.cpu_count() or 1
        n = int(n_workers) if n_workers is not None else min(n_stacks, max(1, cores // 2))
        threads = max(1, cores // n)
        # One task per process at a time: TensorFlow gets its threads alone, the model
        # cache is not shared between tasks, and memory per stack stays bounded.
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",  # any free port: never "already in use"
                silence_logs=logging.ERROR,
                env={"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")},
            ) as cluster,
            Client(cluster) as client,
        ):
            log.info("Dask: %d local worker process(es), %d TensorFlow thread(s) each", n, threads)
            yield client, threads


@contextlib.contextmanager
def _log_level(name, level):
    """Raise the level of logger ``name`` to at least ``level`` inside the block."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(level, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(before)


def _dask_available():
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------ on the workers
#: The model this process loaded last: ``(key, density network)``.
_MODEL = {}
_MODEL_LOCK = threading.Lock()


def _count_task(model, job, options, device=None, threads=None):
    """Count one stack (a task) on ``device``: a StackResult, failed for a DefconError.

    Other errors propagate, so that Dask retries the task.
    """
    from .backends import device_scope
    from .predict import count_tiff

    start = time.perf_counter()
    try:
        with device_scope(device):
            network = _cached_network(model, threads)
            counts = count_tiff(
                network, job.stack, counts=job.counts, density_output=job.density, **options
            )
    except DefconError as err:
        return StackResult(job.stack, None, str(err), time.perf_counter() - start)
    return StackResult(job.stack, counts, "", time.perf_counter() - start)


def _cached_network(model, threads):
    """The density network of ``model``, loaded once per process (and file version)."""
    from .predict import _density_network

    path = Path(model)
    key = (model, *((path.stat().st_mtime_ns, path.stat().st_size) if path.exists() else ()))
    with _MODEL_LOCK:
        if _MODEL.get("key") != key:
            from .backends import is_tensorflow

            if is_tensorflow():  # other backends: Keras is imported with the model
                _import_tensorflow_quietly()
                if threads is not None:
                    _limit_tensorflow_threads(threads)
            _MODEL.clear()  # one model per process: a new version replaces the old
            _MODEL.update(key=key, network=_density_network(model))
        return _MODEL["network"]


def _import_tensorflow_quietly():
    """Import TensorFlow in a worker without its start-up notes on stderr."""
    if "tensorflow" not in sys.modules:
        from .cli import _import_tensorflow

        _import_tensorflow(show_device=False)


def _limit_tensorflow_threads(threads):
    """Limit TensorFlow's thread pools, if it has not started them yet."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(min(2, int(threads)))
    except RuntimeError:  # already initialised (an earlier model in this process)
        pass
