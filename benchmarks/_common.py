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

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, h5py {h5py.__version__}")


def peak_rss_mib():
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(code):
    """Run Python code in a fresh process; return its stdout (last line) as text."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out.stdout.strip().splitlines()[-1]
