"""Training throughput from a compact HDF5 set against in-memory arrays, and peak memory.

Usage: [KERAS_BACKEND=jax|torch] python benchmarks/training_data.py [--gib 4.2]
[--frames 2048] [--repeats 3] [--large-batches 100] [--folder DIR]

1. Fits the density network on the same first FRAMES frames, once from numpy
   arrays in memory and once streamed by CompactSetBatches from HDF5, in fresh
   processes, alternating, REPEATS times each; reports the median samples/s of
   the second epoch (the first includes graph building), its Mpx/s, the
   fraction of the machine's sgemm rate it uses (a training step taken as
   3 x 20.3 kFLOP per pixel; sgemm measured by each process before and after
   training, the fastest of numpy's and the backend's 2048 x 2048 float32
   matmul), and the ratio.
2. Streams 2 x LARGE_BATCHES batches drawn from every part of a set of GIB GiB
   and reports that process's peak RSS.

Runs on the Keras backend that KERAS_BACKEND names (the processes inherit it).
The streamed side is what training uses: CompactSetBatches.for_fit() (tf.data
on TensorFlow, a keras.utils.PyDataset on the other backends).
"""

import argparse
import json
import os
import shutil
import statistics
from pathlib import Path

from _common import (
    FLOP_PER_PIXEL,
    TRAIN_FLOP_FACTOR,
    fraction_of_sgemm,
    machine_facts,
    run_child,
    write_synthetic_compact,
)

BYTES_PER_FRAME = 64 * 64 * (4 + 4 + 1)

FIT = """
import json, sys, resource, keras
sys.path.insert(0, {here!r})
from _common import fit_rate, sgemm_rates
from defcon.backends import backend_version
sgemm = [] if {steps} else list(sgemm_rates().values())
rate = fit_rate({path!r}, {source!r}, {frames}, {steps})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"samples_per_s": rate, "peak_rss_mib": peak,
                   "sgemm": max(sgemm + list(sgemm_rates().values())) if sgemm else None,
                   "backend": keras.backend.backend(), "version": backend_version()}}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.2, help="size of the large set (4.2)")
    parser.add_argument("--frames", type=int, default=2048, help="frames per timed epoch")
    parser.add_argument("--repeats", type=int, default=3, help="processes per source (3)")
    parser.add_argument(
        "--large-batches", type=int, default=100, help="batches per epoch on the large set (100)"
    )
    parser.add_argument("--folder", default="/tmp/defcon-bench-training")
    args = parser.parse_args()
    load = os.getloadavg()  # before this benchmark adds its own
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "compact.h5"
    n_frames = int(args.gib * 2**30 / BYTES_PER_FRAME)
    write_synthetic_compact(path, n_frames)
    here = str(Path(__file__).resolve().parent)
    runs = {"memory": [], "hdf5": []}
    for _ in range(args.repeats):
        for source in runs:
            code = FIT.format(here=here, path=str(path), source=source, frames=args.frames, steps=0)
            runs[source].append(json.loads(run_child(code)))
    large = FIT.format(
        here=here, path=str(path), source="hdf5", frames=n_frames, steps=args.large_batches
    )
    large_out = json.loads(run_child(large))
    first = runs["memory"][0]
    print(
        f"{machine_facts()}, Keras on {first['backend']} {first['version']}, "
        f"load average at start {' '.join(f'{x:.1f}' for x in load)}"
    )
    print(
        f"density network, batch 32, 64x64 frames, {args.frames} frames per epoch, "
        f"median of {args.repeats} fresh process(es) each; % of sgemm: samples/s x 4096 px "
        f"x {TRAIN_FLOP_FACTOR} x {FLOP_PER_PIXEL / 1e3:.1f} kFLOP/px / the process's sgemm rate:"
    )
    medians = {}
    for source, label in (
        ("memory", "from numpy arrays in memory"),
        ("hdf5", "streamed from HDF5"),
    ):
        rates = [r["samples_per_s"] for r in runs[source]]
        medians[source] = rate = statistics.median(rates)
        sgemm = statistics.median(r["sgemm"] for r in runs[source])
        share = fraction_of_sgemm(rate * 64 * 64, sgemm, TRAIN_FLOP_FACTOR)
        print(
            f"  {label + ':':29s}{rate:6.0f} samples/s, {rate * 64 * 64 / 1e6:5.2f} Mpx/s, "
            f"{100 * share:4.1f} % of sgemm ({sgemm:.0f} GFLOP/s)  (runs: "
            + ", ".join(f"{r:.0f}" for r in rates)
            + ")"
        )
    print(f"  HDF5 / memory: {100 * medians['hdf5'] / medians['memory']:.0f} %")
    print(
        f"large set: {n_frames} frames, {path.stat().st_size / 2**30:.2f} GiB; "
        f"2 epochs of {args.large_batches} batches from all over it: peak RSS "
        f"{large_out['peak_rss_mib']:.0f} MiB"
    )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
