"""Live counting during acquisition: one frame at a time, as it leaves the camera.

DEFCoN's own use is feedback control of the activation laser: count the
emitters of each new frame and adjust the 405 nm power to keep the density
near a target. :class:`Counter` counts one frame per call
(:meth:`Counter.push`); :class:`LiveCounter` counts in a background thread and
never blocks the camera: :meth:`LiveCounter.submit` returns at once and keeps
at most one frame waiting, dropping the older one when a newer arrives.

Counts equal :func:`~defcon.predict.count_tiff`'s for the same frames: frames
are padded to multiples of 4 and, when very large, tiled exactly as
:func:`~defcon.predict.predict_stack` does, and run through the compiled
network (:mod:`defcon.engine`) one frame per call, the fastest path measured
for a single frame. Measured latencies: ``docs/performance.md``, "Live counting".

Examples
--------
>>> counter = Counter("pretrained", frame_shape=(256, 256))  # doctest: +SKIP
>>> result = counter.push(frame)  # doctest: +SKIP
>>> result.count, result.max_local_count, result.latency_s  # doctest: +SKIP

>>> with Counter("pretrained").start(on_result=print) as live:  # doctest: +SKIP
...     for frame in camera:
...         live.submit(frame)  # returns at once
"""

import dataclasses
import logging
import threading
import time

import numpy as np

from .engine import DEFAULT_PRECISION, PRECISIONS
from .errors import CounterClosedError, ParameterError, ShapeMismatchError
from .predict import _density_network, _pad, _Runner, max_local_count

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LiveCount:
    """The count of one frame.

    Attributes
    ----------
    index : int
        0-based number of the frame among those pushed (:class:`Counter`) or
        submitted (:class:`LiveCounter`, where dropped frames leave gaps).
    count : float
        Emitters in the frame: the sum of its density map.
    max_local_count : float
        The most emitters in any ``box_size`` x ``box_size`` box of the frame
        (the ``max_local_count`` column of ``defcon predict``'s CSV).
    latency_s : float
        Seconds from :meth:`Counter.push` (or :meth:`LiveCounter.submit`,
        including the wait for the worker) to the result.
    """

    index: int
    count: float
    max_local_count: float
    latency_s: float


class Counter:
    """Count the emitters of single frames, synchronously.

    Parameters
    ----------
    model : FCN, str or Path
        A density network (a 'both' network's density output is used), a model
        file, or the name of a shipped model such as ``'pretrained'``
        (see :meth:`FCN.from_file <defcon.networks.FCN.from_file>`).
    box_size : int
        Side of the box of the maximum local count, pixels.
    precision : {'float32', 'bfloat16'}, optional
        Arithmetic of the network (default ``defcon.engine.DEFAULT_PRECISION``).
    frame_shape : tuple of int (H, W), optional
        Prepare and warm up the network for frames of this shape now, so the
        first :meth:`push` is as fast as the others. Otherwise the first push
        of each new frame shape does it.

    Raises
    ------
    ParameterError
        ``box_size``, ``precision`` or ``frame_shape`` out of range.
    ModelKindError
        ``model`` is not a density network.

    Notes
    -----
    The compiled network is looked up from the model's weights when the frame
    shape changes; train the model further and counts of frames of the same
    shape still use the weights it had then (make a new Counter). Do not push
    to a counter while a :class:`LiveCounter` started from it is open.
    """

    def __init__(self, model, box_size=7, precision=None, *, frame_shape=None):
        if isinstance(box_size, bool) or not isinstance(box_size, (int, np.integer)):
            raise ParameterError(f"box_size must be an int, got {box_size!r}")
        if box_size < 1:
            raise ParameterError(f"box_size must be >= 1, got {box_size}")
        precision = precision or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise ParameterError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model = _density_network(model)
        self.box_size = int(box_size)
        self.precision = precision
        self.pushed = 0
        self._runner, self._shape = None, None
        if frame_shape is not None:
            shape = tuple(frame_shape) if np.ndim(frame_shape) == 1 else ()
            if len(shape) != 2 or any(int(n) < self.box_size for n in shape):
                raise ParameterError(
                    f"frame_shape must be (height, width) of at least the {self.box_size} x "
                    f"{self.box_size} box, got {frame_shape!r}"
                )
            self.warm_up(shape)

    def warm_up(self, frame_shape):
        """Prepare the network for frames of ``frame_shape`` (H, W) and run it once."""
        self._prepare(tuple(int(n) for n in frame_shape))
        self._density(np.zeros(self._shape, np.float32))

    def push(self, frame):
        """Count the emitters of one frame.

        Parameters
        ----------
        frame : array_like of shape (H, W)
            Raw pixel values of any real dtype, any size of at least the box;
            min-max normalised inside, as :func:`~defcon.predict.predict_stack`.

        Returns
        -------
        LiveCount

        Raises
        ------
        ShapeMismatchError
            ``frame`` is not a 2-D real array at least ``box_size`` pixels on each side.
        """
        start = time.perf_counter()
        result = self._count(self.check_frame(frame), self.pushed, start)
        self.pushed += 1
        return result

    def start(self, on_result=None):
        """A :class:`LiveCounter` counting with this counter in a background thread."""
        return LiveCounter(self, on_result=on_result)

    def check_frame(self, frame):
        """``frame`` as an (H, W) array, or a :class:`ShapeMismatchError` naming the problem."""
        a = np.asarray(frame)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a):
            raise ShapeMismatchError(f"frame: got dtype {a.dtype}; expected real pixel values")
        if a.ndim != 2:
            raise ShapeMismatchError(
                f"frame: got an array of shape {a.shape}; expected one frame of shape (H, W)"
            )
        if min(a.shape) < self.box_size:
            raise ShapeMismatchError(
                f"frame: got {a.shape[0]} x {a.shape[1]} pixels; the frame must be at least "
                f"the {self.box_size} x {self.box_size} box of the maximum local count"
            )
        return a

    # ------------------------------------------------------------- internals
    def _count(self, frame, index, start):
        density = self._density(frame)
        return LiveCount(
            index=index,
            count=float(density.sum(dtype=np.float64)),
            max_local_count=float(max_local_count(density, self.box_size)[0]),
            latency_s=time.perf_counter() - start,
        )

    def _prepare(self, shape):
        if shape != self._shape:
            self._runner = _Runner(self.model, self.precision, shape, 1, None)
            self._shape = shape

    def _density(self, frame):
        """Density map (H, W), float32, as ``predict_stack`` gives it, without its reader thread."""
        self._prepare(frame.shape)
        run = self._runner
        x = _pad(frame[np.newaxis], run.hp, run.wp)
        density = run._tiled(x) if run.tile else run.net(x, normalize=True)
        return density[0, : run.h, : run.w, 0]


class LiveCounter:
    """Count frames in a background thread, never blocking the caller.

    :meth:`submit` returns at once. At most one frame waits while one is being
    counted: a frame submitted while another waits replaces it, and the older
    one is dropped (counted in :attr:`dropped`), so results are always about
    the most recent frames. An error in the worker stops it and is raised by
    the next :meth:`submit` or :meth:`close`.

    Parameters
    ----------
    counter : Counter
    on_result : callable, optional
        Called with each :class:`LiveCount`, in the worker thread: keep it short
        (it delays the next count) and thread-safe. An exception in it stops
        the worker as a counting error does.

    Attributes
    ----------
    submitted, counted, dropped : int
        Frames accepted by :meth:`submit`, counted, and dropped (replaced while
        waiting, waiting when the worker stopped on an error, or the one whose
        counting failed). After :meth:`close`, ``counted + dropped == submitted``.
    """

    def __init__(self, counter, on_result=None):
        self.counter = counter
        self.submitted = self.counted = self.dropped = 0
        self._on_result = on_result
        self._latest = None
        self._waiting = None  # (index, frame, submit time)
        self._closed = False
        self._error = None
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="defcon-live", daemon=True)
        self._thread.start()

    def submit(self, frame):
        """Queue ``frame`` (H, W) for counting and return at once.

        The frame is checked and copied here (the camera may reuse its buffer).

        Raises
        ------
        ShapeMismatchError
            ``frame`` is not a 2-D real array at least the box on each side.
        CounterClosedError
            The counter is closed, or stopped after an error already raised.
        Exception
            The error that stopped the worker, once.
        """
        start = time.perf_counter()
        frame = np.array(self.counter.check_frame(frame), copy=True)
        with self._lock:
            self._raise_error()
            if self._closed:
                raise CounterClosedError(
                    "submit: the LiveCounter is closed (or stopped after an error already raised)"
                )
            if self._waiting is not None:
                self.dropped += 1
            self._waiting = (self.submitted, frame, start)
            self.submitted += 1
            self._lock.notify()

    def latest(self):
        """The most recent :class:`LiveCount`, or None before the first."""
        with self._lock:
            return self._latest

    def close(self):
        """Count the frame still waiting, stop the worker and join it.

        Raises
        ------
        Exception
            The error that stopped the worker, if not raised yet.
        """
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        with self._lock:
            self._raise_error()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:  # the caller's error comes first; the worker's would hide it: log that one
            with self._lock:
                self._closed = True
                self._lock.notify()
            self._thread.join()
            if self._error is not None:
                log.warning("live counting also failed: %r", self._error)
                self._error = None

    def _raise_error(self):
        """Raise the worker's error once (the lock held); after that, the counter is closed."""
        if self._error is not None:
            error, self._error, self._closed = self._error, None, True
            raise error

    def _work(self):
        while True:
            with self._lock:
                while self._waiting is None and not self._closed:
                    self._lock.wait()
                if self._waiting is None:
                    return
                (index, frame, start), self._waiting = self._waiting, None
            try:
                result = self.counter._count(frame, index, start)
                with self._lock:
                    self._latest = result
                    self.counted += 1
                if self._on_result is not None:
                    self._on_result(result)
            except BaseException as err:  # re-raised in the caller's thread
                with self._lock:
                    counted = self._latest is not None and self._latest.index == index
                    self.dropped += (not counted) + (self._waiting is not None)
                    self._waiting, self._error, self._closed = None, err, True
                return
