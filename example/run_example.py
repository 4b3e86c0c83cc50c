"""End to end on built-in defaults, from simulation to counts on a held-out stack.

Simulate -> TrainingSet -> compact set -> train -> count emitters in a
held-out stack.

Usage: python example/run_example.py [--out example/run] [--frames 1500]

Everything is written into the output folder; a few minutes on two CPU cores.
"""

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from defcon import FCN, TrainingSet, compact_set, train  # noqa: E402
from defcon.groundtruth import count_per_frame  # noqa: E402
from defcon.predict import count_tiff  # noqa: E402
from defcon.simulate import simulate  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "quickstart.ini"


def main():
    """Run the example; ``--help`` lists the options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=HERE / "run", type=Path, help="output folder")
    parser.add_argument("--frames", type=int, default=1500, help="frames per training stack")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    print("1. simulating two training stacks and one held-out stack (64 x 64, density sweeps)")
    stacks = {}
    for name, seed, photons in (("train1", 1, 2000), ("train2", 2, 1400), ("heldout", 3, 1700)):
        summary = simulate(
            out / name,
            args.frames if name != "heldout" else 500,
            64,
            64,
            seed=seed,
            photon_rate=photons,
            density_sweep=True,
            progress=True,
        )
        stacks[name] = summary
        print(
            f"   {summary['stack']}: {summary['n_frames']} frames, "
            f"{summary['emitters_per_frame_min']} to {summary['emitters_per_frame_max']} "
            "emitters per frame"
        )

    print("2. building the TrainingSet")
    with TrainingSet(out / "training.h5", "w") as ts:
        for name in ("train1", "train2"):
            ts.add_dataset(name, stacks[name]["stack"], stacks[name]["frame_logger"], progress=True)
        ts.summary()

    print("3. compacting (shuffle + augment)")
    compact_set(
        out / "training.h5", out / "compact.h5", shuffle=True, augment=True, seed=0, progress=True
    )

    print(f"4. training from {CONFIG.name}")
    config = out / CONFIG.name
    shutil.copyfile(CONFIG, config)
    result = train(config, verbose=2, overwrite=True)  # the example redoes everything
    print(f"   model: {result['model']}; curves: {result['curves']}")

    print("5. counting emitters in the held-out stack")
    model = FCN.from_file(result["model"])
    held = stacks["heldout"]
    counts = count_tiff(model, held["stack"], density_output=out / "heldout_density.tif").counts
    truth = count_per_frame(held["frame_logger"], held["n_frames"], height=64, width=64)
    error = np.abs(counts - truth)
    print(f"   {held['n_frames']} frames, {truth.min()} to {truth.max()} emitters per frame")
    print(
        f"   count error per frame: mean {error.mean():.2f}, median {np.median(error):.2f} "
        f"({100 * error.sum() / truth.sum():.1f} % of all emitters)"
    )
    print(f"   density maps: {out / 'heldout_density.tif'}")
    overlay = plot_overlay(held, out / "heldout_density.tif", counts, truth, out / "overlay.png")
    print(f"   a crowded frame beside its density map: {overlay}")
    print(f"done in {(time.perf_counter() - start) / 60:.1f} min; everything is in {out}")


def plot_overlay(simulation, density_file, counts, truth, path):
    """PNG of the most crowded held-out frame, its density map and the true positions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import tifffile

    index = int(np.argmax(truth))
    frame = tifffile.imread(simulation["stack"], key=index)
    density = tifffile.imread(density_file, key=index)
    emitters = pd.read_csv(simulation["frame_logger"]).query(
        f"frame == {index + 1} and brightness > 250"
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    axes[0].imshow(frame, cmap="gray")
    axes[0].set_title(f"frame {index + 1}: {truth[index]} emitters")
    axes[1].imshow(density, cmap="magma")
    axes[1].set_title(f"density map: count {counts[index]:.1f}")
    for ax in axes:
        # Pixel (r, c) is centred at (c + 0.5, r + 0.5); imshow centres it at (c, r).
        ax.scatter(
            emitters.x - 0.5,
            emitters.y - 0.5,
            s=12,
            facecolors="none",
            edgecolors="cyan",
            linewidths=0.8,
        )
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
