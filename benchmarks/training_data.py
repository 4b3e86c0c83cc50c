"""Training throughput from a compact HDF5 set against in-memory arrays, and peak memory.

Usage: python benchmarks/training_data.py [--gib 4.2] [--frames 2048] [--folder DIR]

1. Fits the density network on the same first FRAMES frames, once from numpy
   arrays in memory and once streamed by CompactSetBatches from HDF5, in fresh
   processes, alternating, three times each; reports the median samples/s of
   the second epoch (the first includes graph building) and the ratio.
2. Streams 200 batches drawn from every part of a set of GIB GiB and reports
   that process's peak RSS.

The streamed side is what training uses: CompactSetBatches.dataset().
"""

import argparse
import json
import shutil
import statistics
from pathlib import Path

import h5py
import numpy as np
from _common import fill_synthetic, machine_facts, run_child

BYTES_PER_FRAME = 64 * 64 * (4 + 4 + 1)

FIT = """
import json, time, resource, h5py, keras, numpy as np
from defcon.networks import FCN
from defcon.models import DensityLoss
from defcon.streaming import CompactSetBatches
keras.utils.set_random_seed(0)
model = FCN(output="density", seed=0)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DensityLoss(0.01))
times = []
timer = keras.callbacks.LambdaCallback(
    on_epoch_begin=lambda e, l: times.append(time.perf_counter()),
    on_epoch_end=lambda e, l: times.append(time.perf_counter()))
f = h5py.File({path!r}, "r")
if {source!r} == "memory":
    x, y = f["input/input"][:{frames}], f["target/target"][:{frames}]
    model.fit(x, y, batch_size=32, epochs=2, shuffle=True, verbose=0, callbacks=[timer])
else:
    data = CompactSetBatches(f, "density", (0, {frames}), 32, shuffle=True, seed=0)
    model.fit(data.dataset().repeat(), epochs=2, verbose=0, callbacks=[timer],
              steps_per_epoch={steps}, shuffle=False)
print(json.dumps({{"samples_per_s": {frames} / (times[3] - times[2]),
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def build_compact(path, n_frames):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = {
            g: f.create_group(g).create_dataset(
                g,
                shape=(n_frames, 64, 64, 1),
                chunks=(1, 64, 64, 1),
                dtype=np.uint8 if g == "seg_map" else np.float32,
            )
            for g in ("input", "target", "seg_map")
        }
        fill_synthetic(data, n_frames, rng)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=4.2, help="size of the large set (4.2)")
    parser.add_argument("--frames", type=int, default=2048, help="frames per timed epoch")
    parser.add_argument("--folder", default="/tmp/defcon-bench-training")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "compact.h5"
    n_frames = int(args.gib * 2**30 / BYTES_PER_FRAME)
    build_compact(path, n_frames)
    steps = -(-args.frames // 32)
    rates = {"memory": [], "hdf5": []}
    for _ in range(3):
        for source in rates:
            out = json.loads(
                run_child(
                    FIT.format(path=str(path), source=source, frames=args.frames, steps=steps)
                )
            )
            rates[source].append(out["samples_per_s"])
    large = FIT.format(path=str(path), source="hdf5", frames=n_frames, steps=100)
    large_out = json.loads(run_child(large))
    print(machine_facts())
    memory, hdf5 = (statistics.median(rates[s]) for s in ("memory", "hdf5"))
    print(
        f"density network, batch 32, 64x64 frames, {args.frames} frames per epoch, "
        "median of 3 fresh processes each:"
    )
    print(
        f"  from numpy arrays in memory: {memory:.0f} samples/s  (runs: "
        + ", ".join(f"{r:.0f}" for r in rates["memory"])
        + ")"
    )
    print(
        f"  streamed from HDF5:          {hdf5:.0f} samples/s  (runs: "
        + ", ".join(f"{r:.0f}" for r in rates["hdf5"])
        + ")"
    )
    print(f"  HDF5 / memory: {100 * hdf5 / memory:.0f} %")
    print(
        f"large set: {n_frames} frames, {path.stat().st_size / 2**30:.2f} GiB; "
        f"2 epochs of 100 batches from all over it: peak RSS "
        f"{large_out['peak_rss_mib']:.0f} MiB"
    )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
