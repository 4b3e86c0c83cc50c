"""Peak memory and time of reading a large frame-logger CSV, streamed vs whole.

Usage: python benchmarks/frame_logger_memory.py [--gib 1.0] [--folder /tmp]

Writes a SASS-like frame logger of about ``--gib`` GiB (64 x 64 px frames, 25
emitters per frame, in frame order, brightness 100-3000 photons) into a
temporary folder inside ``--folder``, then reads it in fresh processes:

* add_dataset: what ``TrainingSet.add_dataset`` does with it (``read_emitters``
  with the frame size and a brightness threshold of 250, then the density maps
  of the first 100 frames from the compact emitters);
* count_per_frame: ``count_per_frame`` on the CSV;
* whole-file baseline: the previous reader, inline (``pd.read_csv`` of the whole
  file, the four required columns converted to float64, the table rebuilt and
  sorted by frame, as ``read_ground_truth`` and ``add_dataset`` did before).

Prints, per way, the peak RSS of its whole process (interpreter, numpy, pandas,
h5py included), that peak after the imports alone, the rows kept and the wall
time of the reading. The folder is deleted afterwards.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine_facts, run_child

SIZE, PER_FRAME, THRESHOLD = 64, 25, 250.0
PATTERNS = 4096  # frames of distinct positions, repeated (SASS emitters also repeat)

CHILD = """
import json, time
import numpy as np, pandas as pd
from defcon import datasets, groundtruth
path, n_frames, size, threshold = {path!r}, {n_frames}, {size}, {threshold}
def peak():  # MiB; unlike ru_maxrss, VmHWM does not start at the parent's peak (Linux)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
imports = peak()
start = time.perf_counter()
if {way!r} == "add_dataset":
    emitters = groundtruth.read_emitters(path, n_frames, size, size, threshold)
    groundtruth.density_stack(emitters, n_frames, size, size, brightness_threshold=threshold,
                              frame_range=(0, 100))
    rows = len(emitters)
elif {way!r} == "count_per_frame":
    rows = int(groundtruth.count_per_frame(path, n_frames, threshold, height=size,
                                           width=size).sum())
else:
    table = pd.read_csv(path, skip_blank_lines=False, low_memory=False).dropna(how="all")
    columns = {{name: pd.to_numeric(table[name]).to_numpy(np.float64)
               for name in ("frame", "x", "y", "brightness")}}
    columns["frame"] = columns["frame"].astype(np.int64)
    truth = pd.DataFrame({{name: columns.get(name, table[name].array) for name in table.columns}})
    truth = truth.sort_values("frame", kind="stable")
    rows = int((truth["brightness"] > threshold).sum())
print(json.dumps({{"peak_rss_mib": peak(), "imports_rss_mib": imports, "rows": rows,
                  "seconds": time.perf_counter() - start}}))
"""


def write_frame_logger(path, gib, seed=0):
    """Write a frame-logger CSV of about ``gib`` GiB; return (frames, rows, bytes)."""
    rng = np.random.default_rng(seed)
    n = PATTERNS * PER_FRAME
    rests = [
        f",{i},{x:.4f},{y:.4f},{z:.4f},{b:.4f}".encode()
        for i, x, y, z, b in zip(
            rng.integers(1, 2_000_000, n),
            rng.uniform(0, SIZE, n),
            rng.uniform(0, SIZE, n),
            rng.uniform(-0.5, 0.5, n),
            rng.uniform(100, 3000, n).round(),
        )
    ]
    patterns = [rests[k * PER_FRAME : (k + 1) * PER_FRAME] for k in range(PATTERNS)]
    target, written, frame = int(gib * 2**30), 0, 0
    with open(path, "wb") as file:
        written += file.write(b"frame,id,x,y,z,brightness\n")
        while written < target:
            block = []
            first = frame + 1
            for frame in range(first, first + 10_000):
                prefix = b"%d" % frame
                block.append(prefix + (b"\n" + prefix).join(patterns[frame % PATTERNS]) + b"\n")
            written += file.write(b"".join(block))
    return frame, frame * PER_FRAME, written


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of the CSV (GiB)")
    parser.add_argument("--folder", default=None, help="where to put the temporary CSV")
    args = parser.parse_args()
    print(machine_facts())
    folder = Path(tempfile.mkdtemp(prefix="defcon-frame-logger-", dir=args.folder))
    try:
        path = folder / "frame_logger.csv"
        start = time.perf_counter()
        n_frames, rows, size = write_frame_logger(path, args.gib)
        print(
            f"wrote {path}: {size / 2**30:.2f} GiB, {rows} rows ({size / rows:.1f} bytes "
            f"each), {n_frames} frames of {SIZE} x {SIZE} px in "
            f"{time.perf_counter() - start:.0f} s"
        )
        print(f"command: python benchmarks/frame_logger_memory.py --gib {args.gib}")
        print("| way | peak RSS (MiB) | after imports (MiB) | rows kept | wall (s) |")
        print("|---|---:|---:|---:|---:|")
        for way in ("add_dataset", "count_per_frame", "whole-file baseline"):
            code = CHILD.format(
                path=str(path), n_frames=n_frames, size=SIZE, threshold=THRESHOLD, way=way
            )
            result = json.loads(run_child(code))
            print(
                f"| {way} | {result['peak_rss_mib']:.0f} | {result['imports_rss_mib']:.0f} "
                f"| {result['rows']} | {result['seconds']:.1f} |",
                flush=True,
            )
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
