"""Helpers shared by the benchmark scripts: machine facts and peak memory."""

import os
import platform
import resource
import subprocess
import sys


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
