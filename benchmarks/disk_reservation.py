"""What reserving disk space before HDF5 writes costs.

``TrainingSet.add_dataset`` and ``compact_set`` allocate the disk blocks they
will write (posix_fallocate) and trim what was not used. This compares
``add_dataset`` with that reservation against the same call with the
reservation turned into a no-op, alternating the two, and prints medians.

Usage::

    python benchmarks/disk_reservation.py [--frames 4000] [--repeats 5]
"""

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from _common import machine_facts

from defcon import datasets
from defcon.simulate import simulate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_facts())
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        folder = Path(folder)
        simulate(folder, n_frames=args.frames, height=64, width=128, seed=0)
        reserving = datasets.hdf5_space
        times = {"reserved": [], "not reserved": []}
        for repeat in range(args.repeats):
            for label in times:
                datasets.hdf5_space = (
                    reserving if label == "reserved" else lambda *a, **k: contextlib.nullcontext()
                )
                path = folder / f"{repeat}-{label}.h5"
                start = time.perf_counter()
                with datasets.TrainingSet(path) as ts:
                    ts.add_dataset("sim", folder / "stack.tif", folder / "frame_logger.csv")
                times[label].append(time.perf_counter() - start)
                size = path.stat().st_size
                path.unlink()
        datasets.hdf5_space = reserving
    gib = args.frames * 64 * 128 * 9 / 2**30
    for label, values in times.items():
        print(
            f"add_dataset, {args.frames} frames of 64 x 128 ({gib:.2f} GiB written), {label}: "
            f"median {statistics.median(values):.2f} s (min {min(values):.2f}, "
            f"max {max(values):.2f})"
        )
    ratio = statistics.median(times["reserved"]) / statistics.median(times["not reserved"])
    print(f"reserved / not reserved: {ratio:.3f}; file size {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
