"""compact_set throughput and peak memory on a large TrainingSet.

Usage: python benchmarks/compact.py [--gib 2.1] [--folder /tmp/defcon-bench]

Builds a synthetic TrainingSet of the given size (64 x 64 frames; input and
target float32, seg_map uint8), then runs compact_set with shuffle and augment
in a fresh process and reports frames/s, MB/s and that process's peak RSS as a
fraction of the set's size.
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from _common import fill_synthetic, machine_facts, run_child

BYTES_PER_FRAME = 64 * 64 * (4 + 4 + 1)


def build_set(path, n_frames, n_sources=4):
    from defcon.datasets import GROUPS, TrainingSet

    rng = np.random.default_rng(0)
    per_source = n_frames // n_sources
    with TrainingSet(path, "w") as ts:
        for k in range(n_sources):
            data = {
                g: ts[g].create_dataset(
                    f"s{k}",
                    shape=(per_source, 64, 64, 1),
                    chunks=(1, 64, 64, 1),
                    dtype=np.uint8 if g == "seg_map" else np.float32,
                )
                for g in GROUPS
            }
            fill_synthetic(data, per_source, rng)
    return per_source * n_sources


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.1, help="set size in GiB (2.1)")
    parser.add_argument("--folder", default="/tmp/defcon-bench-compact")
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    source, output = folder / "training.h5", folder / "compact.h5"
    n_frames = build_set(source, int(args.gib * 2**30 / BYTES_PER_FRAME))
    size = source.stat().st_size
    code = f"""
import json, time, resource
from defcon.datasets import compact_set
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
compact_set({str(source)!r}, {str(output)!r}, shuffle=True, augment=True, seed=0)
print(json.dumps({{"seconds": time.perf_counter() - t, "baseline_mib": baseline,
                   "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""
    result = json.loads(run_child(code))
    print(machine_facts())
    print(f"set: {n_frames} frames of 64x64, {size / 2**30:.2f} GiB on disk")
    print(
        f"compact_set(shuffle=True, augment=True): {result['seconds']:.1f} s, "
        f"{n_frames / result['seconds']:.0f} frames/s, "
        f"{size / 2**20 / result['seconds']:.0f} MiB/s"
    )
    print(
        f"peak RSS of the compacting process: {result['peak_rss_mib']:.0f} MiB = "
        f"{100 * result['peak_rss_mib'] * 2**20 / size:.1f} % of the set "
        f"(of which {result['baseline_mib']:.0f} MiB is the interpreter and libraries "
        "before compact_set starts)"
    )
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
