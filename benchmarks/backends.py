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
from _common import machine_facts, write_synthetic_compact

CHILD = """
import json, sys, time, keras, numpy as np
sys.path.insert(0, HERE)
from _common import fit_rate
from defcon.networks import FCN
from defcon.predict import predict_stack
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

out["train_memory"] = fit_rate(PATH, "memory", FRAMES)
out["train_hdf5"] = fit_rate(PATH, "hdf5", FRAMES)
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
        write_synthetic_compact(path, args.frames)
        code = CHILD.replace("PATH", repr(str(path))).replace("FRAMES", str(args.frames))
        code = code.replace("HERE", repr(str(Path(__file__).resolve().parent)))
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
