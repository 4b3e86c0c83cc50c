"""Benchmark: ground-truth density maps, windowed (defcon) vs naive full-frame Gaussians.

Run from the project root::

    python benchmarks/groundtruth.py            # about a minute on 2 cores
    python benchmarks/groundtruth.py --repeats 3

Prints machine facts and a Markdown table of emitters/s (medians of the repeats;
speed-ups are medians of ratios measured back to back in the same round)
for 64x64 (the real SASS frame logger data_2, and synthetic emitters), 256x256 and
1024x1024 frames (synthetic emitters at the same density per area as data_2; unlike
SASS emitters they never repeat a position), against two naive methods measured in
the same run on a subset of the emitters:

* naive erf: one full-frame, pixel-integrated Gaussian per emitter (two 1-D erf
  profiles and their outer product added to the frame), a Python loop over emitters.
  Its output stack is allocated outside the timed region (favours the naive method).
* DEFCoN gen_map: the original DEFCoN code path, ``scipy.stats.multivariate_normal.pdf``
  on the full pixel-centre grid per emitter.

It also times the scatter strategies considered for ``density_stack``.
"""

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy
from scipy.special import erf
from scipy.stats import multivariate_normal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from defcon import groundtruth  # noqa: E402
from defcon.groundtruth import density_stack, read_ground_truth  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
DATA_2 = REFERENCE / "sass-frame-loggers" / "data_2_frame_logger.csv"
# (frame size, real SASS data?, frames, emitters timed for naive erf, for DEFCoN gen_map)
CASES = [
    (64, True, 1500, 1000, 200),
    (64, False, 1500, 1000, 200),
    (256, False, 100, 200, 20),
    (1024, False, 8, 20, 3),
]


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def paired_rates(runs, repeats):
    """Run each (fn, items) in turn, ``repeats`` rounds after a warm-up round.

    Returns items/s per run and round; ratios taken within a round share the
    machine's load at that moment.
    """
    rates = [[] for _ in runs]
    for round_ in range(repeats + 1):
        for (fn, items), out in zip(runs, rates):
            start = time.perf_counter()
            fn()
            if round_:
                out.append(items / (time.perf_counter() - start))
    return rates


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic(size, n_frames, per_pixel, rng):
    per_frame = int(round(per_pixel * size * size))
    n = per_frame * n_frames
    return pd.DataFrame(
        {
            "frame": np.repeat(np.arange(1, n_frames + 1), per_frame),
            "x": rng.uniform(0, size, n),
            "y": rng.uniform(0, size, n),
            "brightness": rng.uniform(300, 3000, n),
        }
    )


def naive_erf(gt, out, sigma=1.0):
    """One full-frame, pixel-integrated Gaussian per emitter."""
    _, height, width = out.shape
    col_edges, row_edges = np.arange(width + 1), np.arange(height + 1)
    scale = 1.0 / (sigma * np.sqrt(2.0))
    for frame, x, y in zip(gt["frame"].to_numpy(), gt["x"].to_numpy(), gt["y"].to_numpy()):
        wx = 0.5 * np.diff(erf((col_edges - x) * scale))
        wy = 0.5 * np.diff(erf((row_edges - y) * scale))
        out[frame - 1] += np.outer(wy, wx)


def naive_defcon(gt, out, sigma=1.0):
    """DEFCoN's generate_map: the 2-D pdf on the full pixel-centre grid, per emitter."""
    _, height, width = out.shape
    cols, rows = np.meshgrid(range(width), range(height))
    grid = np.hstack((cols.reshape(-1, 1), rows.reshape(-1, 1)))
    for frame, x, y in zip(gt["frame"].to_numpy(), gt["x"].to_numpy(), gt["y"].to_numpy()):
        pdf = multivariate_normal.pdf(grid + 0.5, [x, y], cov=sigma)
        out[frame - 1] += pdf.reshape(height, width)


def scatter(gt, n_frames, height, width, strategy, sigma=1.0):
    """Windowed maps with a given scatter strategy (no validation), for comparison."""
    rows0, wy = groundtruth._axis_weights(gt["y"].to_numpy(), height, sigma, "integrated")
    cols0, wx = groundtruth._axis_weights(gt["x"].to_numpy(), width, sigma, "integrated")
    frames = gt["frame"].to_numpy() - 1
    out = np.zeros((n_frames, height, width), dtype=np.float32)
    if strategy == "bincount":
        base = (frames * height + rows0) * width + cols0
        offsets = (np.arange(wy.shape[1])[:, None] * width + np.arange(wx.shape[1])).ravel()
        index = (base[:, None] + offsets).ravel()
        values = (wy[:, :, None] * wx[:, None, :]).ravel()
        out += np.bincount(index, values, minlength=out.size).reshape(out.shape)
    else:  # np.add.at in blocks of `strategy` entries, as in density_stack
        default, groundtruth._BLOCK_ENTRIES = groundtruth._BLOCK_ENTRIES, strategy
        try:
            groundtruth._scatter_add(out, frames, rows0, wy, cols0, wx)
        finally:
            groundtruth._BLOCK_ENTRIES = default
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per figure (the median is reported)"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    print(f"command: python benchmarks/groundtruth.py --repeats {args.repeats}")
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (1 min)")
    print(
        f"CPU: {cpu_model()}; logical CPUs: {os.cpu_count()}; "
        f"usable: {len(os.sched_getaffinity(0))}"
    )
    print(
        f"Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, pandas {pd.__version__}"
    )

    if DATA_2.exists():
        real = read_ground_truth(DATA_2, n_frames=1500, height=64, width=64)
        source = "SASS data_2"
    else:
        warnings.warn(f"{DATA_2} not found; using synthetic emitters at 64x64", stacklevel=2)
        real, source = synthetic(64, 1500, 25 / 4096, rng), "synthetic"
    per_pixel = len(real) / (1500 * 64 * 64)

    print(
        "\n| frame | emitters drawn (source) | defcon | naive erf (emitters timed) | speed-up "
        "| DEFCoN gen_map (emitters timed) | speed-up |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for size, use_real, n_frames, n_naive, n_defcon in CASES:
        gt = real if use_real else synthetic(size, n_frames, per_pixel, rng)
        label = source if use_real else "synthetic"
        bright = gt[gt["brightness"] > 250]
        naive_runs = []
        for method, n_sub in ((naive_erf, n_naive), (naive_defcon, n_defcon)):
            subset = bright.iloc[:n_sub]
            out = np.zeros((int(subset["frame"].max()), size, size), dtype=np.float32)
            naive_runs.append((lambda m=method, s=subset, o=out: m(s, o), n_sub))
        runs = [(lambda: density_stack(gt, n_frames, size, size), len(bright))] + naive_runs
        rates = paired_rates(runs, args.repeats)
        fast = statistics.median(rates[0])
        cells = [
            f"{size}x{size}",
            f"{len(bright)} in {n_frames} frames ({label})",
            f"{fast:,.0f}/s",
        ]
        for (_, n_sub), naive in zip(naive_runs, rates[1:]):
            ratio = statistics.median(f / n for f, n in zip(rates[0], naive))
            cells += [f"{statistics.median(naive):,.1f}/s ({n_sub})", f"{ratio:,.0f}x"]
        print("| " + " | ".join(cells) + " |")

    print(
        f"\nscatter strategies, 64x64 {source}, integrated kernel, weights included, "
        f"no validation (median ms):"
    )
    bright = real[real["brightness"] > 250]
    for strategy, name in (
        (1 << 16, "np.add.at, blocks of 2**16 entries (chosen)"),
        (1 << 22, "np.add.at, blocks of 2**22 entries"),
        ("bincount", "np.bincount on flat indices, whole stack"),
    ):
        ms = 1e3 * median_time(lambda: scatter(bright, 1500, 64, 64, strategy), args.repeats)
        print(f"  {name:45s} {ms:6.1f} ms")
    for kernel in ("integrated", "sampled"):
        ms = 1e3 * median_time(
            lambda: density_stack(real, 1500, 64, 64, kernel=kernel), args.repeats
        )
        print(f"  density_stack(kernel={kernel!r}), all included {ms:9.1f} ms")


if __name__ == "__main__":
    main()
