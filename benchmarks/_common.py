"""Helpers shared by the benchmark scripts: machine facts, peak memory, sgemm rates."""

import os
import platform
import resource
import statistics
import subprocess
import sys
import time

#: Cost of the DEFCoN network (segmentation + density stage) in float32 FLOPs per
#: input pixel (83 MFLOP per 64 x 64 frame; docs/performance.md, "Inference").
FLOP_PER_PIXEL = 20.3e3
#: A training step costs about three forward passes (forward, then the gradients
#: of the activations and of the weights).
TRAIN_FLOP_FACTOR = 3


def machine_facts():
    """One line: CPU model, cores, Python and key library versions."""
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import h5py
    import numpy

    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {numpy.__version__}, h5py {h5py.__version__}"
    )


def backend_matmul(n=2048):
    """One n x n float32 matmul on the active Keras backend, compiled as the backend does.

    ``tf.function`` on TensorFlow, ``jax.jit`` on JAX, eager on PyTorch. The
    product is summed inside the compiled function and read back as a float,
    so the call waits for the device (a GPU too) without copying the matrix.

    Parameters
    ----------
    n : int

    Returns
    -------
    callable
        Runs one product; no arguments.
    float
        Its FLOPs, ``2 n**3``.
    """
    import keras
    import numpy
    from keras import ops

    rng = numpy.random.default_rng(0)
    a, b = (ops.convert_to_tensor(rng.random((n, n), dtype=numpy.float32)) for _ in range(2))

    def product(a, b):
        return ops.sum(ops.matmul(a, b))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        product = tf.function(product)
    elif backend == "jax":
        import jax

        product = jax.jit(product)
    return lambda: float(ops.convert_to_numpy(product(a, b))), 2.0 * n**3


def numpy_matmul(n=2048):
    """One n x n float32 matmul in NumPy (its BLAS) as a callable, and its FLOPs."""
    import numpy

    rng = numpy.random.default_rng(0)
    a, b = (rng.random((n, n), dtype=numpy.float32) for _ in range(2))
    return lambda: a @ b, 2.0 * n**3


def sgemm_rates(n=2048, repeats=7):
    """Float32 matmul GFLOP/s of NumPy and of the Keras backend, medians of ``repeats``.

    Returns
    -------
    dict
        ``{'numpy': GFLOP/s, <backend name>: GFLOP/s}``; the larger one is the
        machine's measured sgemm rate.
    """
    import keras

    rates = {}
    for name, (call, flops) in (
        ("numpy", numpy_matmul(n)),
        (keras.backend.backend(), backend_matmul(n)),
    ):
        call()  # warm-up: compilation, thread pools
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        rates[name] = flops / statistics.median(times) / 1e9
    return rates


def fraction_of_sgemm(pixels_per_s, gflops, factor=1):
    """``pixels_per_s`` x ``factor`` x :data:`FLOP_PER_PIXEL` as a fraction of ``gflops``."""
    return pixels_per_s * factor * FLOP_PER_PIXEL / (gflops * 1e9)


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(code):
    """Run Python code in a fresh process; return its stdout (last line) as text."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return out.stdout.strip().splitlines()[-1]


def fill_synthetic(datasets, n_frames, rng, block=4096):
    """Fill ``{'input', 'target', 'seg_map'}`` HDF5 datasets of 64 x 64 frames.

    Inputs are uniform random, targets inputs / 100 and maps inputs > 0.5,
    written ``block`` frames at a time so memory stays bounded.
    """
    import numpy

    for start in range(0, n_frames, block):
        stop = min(start + block, n_frames)
        frames = rng.random((stop - start, 64, 64, 1), dtype=numpy.float32)
        datasets["input"][start:stop] = frames
        datasets["target"][start:stop] = frames * 0.01
        datasets["seg_map"][start:stop] = frames > 0.5


def write_synthetic_compact(path, n_frames, seed=0):
    """A compact set of ``n_frames`` synthetic 64 x 64 frames (:func:`fill_synthetic`)."""
    import h5py
    import numpy

    with h5py.File(path, "w") as f:
        data = {
            g: f.create_group(g).create_dataset(
                g,
                shape=(n_frames, 64, 64, 1),
                chunks=(1, 64, 64, 1),
                dtype=numpy.uint8 if g == "seg_map" else numpy.float32,
            )
            for g in ("input", "target", "seg_map")
        }
        fill_synthetic(data, n_frames, numpy.random.default_rng(seed))


def fit_rate(path, source, frames, steps=0):
    """Samples/s of the density network's second epoch (batch 32, 64 x 64, DensityLoss).

    Parameters
    ----------
    path : str
        A compact set (:func:`write_synthetic_compact`).
    source : {'memory', 'hdf5'}
        Fit on its first ``frames`` frames as numpy arrays in memory, or streamed
        by ``CompactSetBatches.for_fit()`` as training does.
    frames : int
    steps : int
        With 'hdf5': epochs of ``steps`` batches drawn from all of the first
        ``frames`` frames instead of one pass (a large set's memory).
    """
    import h5py
    import keras

    from defcon.backends import is_tensorflow
    from defcon.models import DensityLoss
    from defcon.networks import FCN
    from defcon.streaming import CompactSetBatches

    keras.utils.set_random_seed(0)
    model = FCN(output="density", seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DensityLoss(0.01))
    times = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: times.append(time.perf_counter()),
        on_epoch_end=lambda e, logs: times.append(time.perf_counter()),
    )
    fit = {"epochs": 2, "verbose": 0, "callbacks": [timer]}
    with h5py.File(path, "r") as f:
        if source == "memory":
            x, y = f["input/input"][:frames], f["target/target"][:frames]
            model.fit(x, y, batch_size=32, shuffle=True, **fit)
            return frames / (times[3] - times[2])
        data = CompactSetBatches(f, "density", (0, frames), 32, shuffle=True, seed=0)
        if steps:
            feed = data.dataset().repeat() if is_tensorflow() else data.keras_dataset()
            model.fit(feed, steps_per_epoch=steps, shuffle=False, **fit)
        else:
            model.fit(data.for_fit(), shuffle=False, **fit)
    return frames / (times[3] - times[2])


def spot_counts(stack, sigma, threshold):
    """Count spots the classical way, per frame, shape (n,).

    Local maxima (3x3) of the Gaussian-filtered frame above background +
    ``threshold`` x noise.

    The noise is the robust (median absolute deviation) spread of the filtered
    frame, so empty frames are not filled with noise peaks.
    """
    import numpy
    from scipy import ndimage

    counts = []
    for frame in numpy.asarray(stack, numpy.float32):
        smooth = ndimage.gaussian_filter(frame, sigma)
        background = numpy.median(smooth)
        noise = 1.4826 * numpy.median(numpy.abs(smooth - background))
        peaks = (smooth == ndimage.maximum_filter(smooth, size=3)) & (
            smooth > background + threshold * noise
        )
        counts.append(int(peaks.sum()))
    return numpy.array(counts)
