"""Prediction and training speed of defcon on the TensorFlow, JAX and PyTorch Keras backends.

Usage: python benchmarks/backends.py [--backends tensorflow jax torch] [--repeats 3]

Each repeat runs one fresh process per backend (alternating, so load from
other processes hits both alike; Keras fixes its backend at import) that
measures, for the shipped model (``FCN.pretrained()``):

- predict: frames/s of ``predict_stack`` (float32, default batch) on 64 x 64
  and 512 x 512 frames, after one warm-up call;
- train: samples/s of the density network (batch 32, 64 x 64, DensityLoss)
  in the second epoch, fed from numpy arrays in memory and streamed from a
  compact HDF5 set by ``CompactSetBatches.for_fit()`` (tf.data on TensorFlow,
  a keras.utils.PyDataset elsewhere), as training does.

The table gives the median of the repeats and every run. PyTorch is left out
by default (``--backends ... torch`` adds it; ``pip install "defcon[torch]"``).
For the fraction of the machine's sgemm rate, see predict.py and
training_data.py, which run on any one backend.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h5py
import numpy as np
from _common import fill_synthetic, machine_facts

CHILD = """
import json, time, h5py, keras, numpy as np
from defcon.networks import FCN
from defcon.models import DensityLoss
from defcon.predict import predict_stack
from defcon.streaming import CompactSetBatches
from defcon.backends import backend_version

def rate(fn, n, seconds=4.0):
    fn()  # warm-up: compilation
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        fn(); calls += 1
    return calls * n / (time.perf_counter() - start)

out = {"backend": keras.backend.backend(), "version": backend_version()}
model = FCN.pretrained()
rng = np.random.default_rng(0)
for side, n in ((64, 1024), (512, 8)):
    frames = rng.normal(100, 10, (n, side, side)).astype(np.float32)
    out[f"predict_{side}"] = rate(lambda: predict_stack(model, frames), n)

def fit_rate(source):
    keras.utils.set_random_seed(0)
    net = FCN(output="density", seed=0)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DensityLoss(0.01))
    times = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, l: times.append(time.perf_counter()),
        on_epoch_end=lambda e, l: times.append(time.perf_counter()))
    with h5py.File(PATH, "r") as f:
        if source == "memory":
            x, y = f["input/input"][:FRAMES], f["target/target"][:FRAMES]
            net.fit(x, y, batch_size=32, epochs=2, shuffle=True, verbose=0, callbacks=[timer])
        else:
            data = CompactSetBatches(f, "density", (0, FRAMES), 32, shuffle=True, seed=0)
            net.fit(data.for_fit(), epochs=2, verbose=0, callbacks=[timer], shuffle=False)
    return FRAMES / (times[3] - times[2])

out["train_memory"] = fit_rate("memory")
out["train_hdf5"] = fit_rate("hdf5")
print(json.dumps(out))
"""

COLUMNS = (
    ("predict_64", "predict 64 x 64, frames/s"),
    ("predict_512", "predict 512 x 512, frames/s"),
    ("train_hdf5", "train from HDF5, samples/s"),
    ("train_memory", "train from memory, samples/s"),
)


def run(backend, code):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "jax":
        env.setdefault("JAX_PLATFORMS", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode:
        raise SystemExit(f"{backend} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frames", type=int, default=1024, help="training frames per epoch")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "compact.h5"
        with h5py.File(path, "w") as f:
            data = {
                g: f.create_group(g).create_dataset(
                    g,
                    (args.frames, 64, 64, 1),
                    chunks=(1, 64, 64, 1),
                    dtype=np.uint8 if g == "seg_map" else np.float32,
                )
                for g in ("input", "target", "seg_map")
            }
            fill_synthetic(data, args.frames, np.random.default_rng(0))
        code = CHILD.replace("PATH", repr(str(path))).replace("FRAMES", str(args.frames))
        runs = {b: [] for b in args.backends}
        for _ in range(args.repeats):
            for backend in args.backends:
                runs[backend].append(run(backend, code))
    print(machine_facts())
    print(f"median of {args.repeats} fresh processes per backend (all runs in brackets)")
    for backend, results in runs.items():
        print(f"{backend} {results[0]['version']}:")
        for key, label in COLUMNS:
            values = [r[key] for r in results]
            every = ", ".join(f"{v:.0f}" if v >= 10 else f"{v:.2f}" for v in values)
            median = statistics.median(values)
            print(f"  {label:32s} {median:10.1f}  ({every})")
        ratio = statistics.median(r["train_hdf5"] / r["train_memory"] for r in results)
        print(f"  HDF5 / memory (median of ratios): {100 * ratio:.0f} %")


if __name__ == "__main__":
    main()
