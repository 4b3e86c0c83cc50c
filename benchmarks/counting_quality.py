"""Counting quality: a model trained with configs/default.ini against others.

The others are the published DEFCoN model and a classical spot counter; the
data are held-out simulated 64x64 stacks.

Usage: python benchmarks/counting_quality.py [--folder DIR] [--frames 4000]

Steps (each skipped when its output exists in DIR):
1. simulate 4 training stacks (FRAMES frames each, density sweeps, varied
   brightness and background) and 2 held-out stacks (different seeds);
2. TrainingSet -> compact set (shuffled, augmented);
3. train with configs/default.ini (paths pointed at DIR), timing the wall time;
4. count every held-out frame with (a) the trained model, (b) the published
   DEFCoN model, (c) local maxima above a threshold after a Gaussian filter (the
   filter width and threshold tuned on a training stack), and print the count
   MAE overall and per bin of true count, absolute and relative to the count.
"""

import argparse
import configparser
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from _common import machine_facts, spot_counts

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE_MODEL = PROJECT.parent / "shared" / "reference" / "defcon_tf13.h5"
#: (seed, photon_rate, background, density sweep per um^2)
TRAINING_STACKS = [
    (1, 2000, 20, (0.0, 2.0)),
    (2, 1200, 40, (0.0, 2.0)),
    (3, 3000, 10, (0.0, 2.5)),
    (4, 1600, 30, (0.2, 1.5)),
]
HELD_OUT_STACKS = [(101, 1800, 25, (0.0, 2.2)), (102, 2500, 15, (0.0, 2.2))]
BINS = [0, 5, 10, 20, 30, 40, 1000]
BRIGHTNESS_THRESHOLD = 250


def simulate_all(folder, frames):
    from defcon.simulate import simulate

    for kind, stacks in (("train", TRAINING_STACKS), ("test", HELD_OUT_STACKS)):
        for seed, photons, background, sweep in stacks:
            out = folder / f"{kind}{seed}"
            if not (out / "stack.tif").exists():
                simulate(
                    out,
                    frames,
                    64,
                    64,
                    seed=seed,
                    photon_rate=photons,
                    background=background,
                    density_sweep=sweep,
                )


def build_compact(folder):
    from defcon.datasets import TrainingSet, compact_set

    if (folder / "compact.h5").exists():
        return
    with TrainingSet(folder / "training.h5", "w") as ts:
        for seed, *_ in TRAINING_STACKS:
            ts.add_dataset(
                f"train{seed}",
                folder / f"train{seed}" / "stack.tif",
                folder / f"train{seed}" / "frame_logger.csv",
                brightness_threshold=BRIGHTNESS_THRESHOLD,
            )
    compact_set(folder / "training.h5", folder / "compact.h5", shuffle=True, augment=True, seed=0)


def train_default(folder, tag, initial_model=None):
    """Train with configs/default.ini into folder/tag (InitialModel optional)."""
    from defcon.train import train

    out = folder / tag
    if (out / "defcon_model.keras").exists():
        return json.loads((out / "training_time.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    config = configparser.ConfigParser()
    config.read(PROJECT / "configs" / "default.ini")
    config["General"]["TrainingSetPath"] = str(folder / "compact.h5")
    config["General"]["OutputDir"] = str(out)
    config["General"]["WeightDir"] = str(out / "weights")
    config["General"]["InitialModel"] = str(initial_model or "")
    with open(out / "default.ini", "w") as f:
        config.write(f)
    start = time.perf_counter()
    train(out / "default.ini", verbose=2)
    info = {"seconds": time.perf_counter() - start}
    (out / "training_time.json").write_text(json.dumps(info))
    return info


def true_counts(stack_dir, n_frames):
    from defcon.groundtruth import count_per_frame

    return count_per_frame(
        stack_dir / "frame_logger.csv", n_frames, BRIGHTNESS_THRESHOLD, height=64, width=64
    )


def network_counts(model, stack):
    return model.predict(stack[..., None].astype(np.float32), batch_size=64, verbose=0).sum(
        axis=(1, 2, 3)
    )


def tune_spot_counter(folder):
    seed = TRAINING_STACKS[0][0]
    stack = tifffile.imread(folder / f"train{seed}" / "stack.tif")
    truth = true_counts(folder / f"train{seed}", len(stack))
    best = None
    for sigma in (0.8, 1.0, 1.5):
        for threshold in (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0):
            mae = np.abs(spot_counts(stack, sigma, threshold) - truth).mean()
            if best is None or mae < best[0]:
                best = (mae, sigma, threshold)
    return best[1:]


def table(truth, predictions):
    rows = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (truth >= lo) & (truth < hi)
        if not sel.any():
            continue
        row = {
            "true count": f"{lo}-{hi - 1}" if hi < 1000 else f">= {lo}",
            "frames": int(sel.sum()),
        }
        for name, counts in predictions.items():
            err = np.abs(counts[sel] - truth[sel])
            row[f"{name} MAE"] = f"{err.mean():.2f}"
            row[f"{name} rel."] = f"{100 * err.sum() / max(truth[sel].sum(), 1):.0f} %"
        rows.append(row)
    overall = {"true count": "all", "frames": len(truth)}
    for name, counts in predictions.items():
        err = np.abs(counts - truth)
        overall[f"{name} MAE"] = f"{err.mean():.2f}"
        overall[f"{name} rel."] = f"{100 * err.sum() / truth.sum():.0f} %"
    rows.append(overall)
    return pd.DataFrame(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/defcon-bench-quality")
    parser.add_argument("--frames", type=int, default=4000, help="frames per training stack")
    parser.add_argument(
        "--fine-tune",
        action="store_true",
        help="also train from the published DEFCoN model (InitialModel)",
    )
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    simulate_all(folder, args.frames)
    build_compact(folder)
    timings = {"trained": train_default(folder, "model")}
    if args.fine_tune and REFERENCE_MODEL.exists():
        timings["fine-tuned"] = train_default(folder, "fine_tuned", REFERENCE_MODEL)
    from defcon.networks import FCN

    models = {
        tag: FCN.from_file(
            folder / ("model" if tag == "trained" else "fine_tuned") / "defcon_model.keras"
        )
        for tag in timings
    }
    if REFERENCE_MODEL.exists():
        models["DEFCoN"] = FCN.from_file(REFERENCE_MODEL)
    sigma, threshold = tune_spot_counter(folder)
    truth, predictions = [], {name: [] for name in [*models, "spots"]}
    for seed, *_ in HELD_OUT_STACKS:
        stack = tifffile.imread(folder / f"test{seed}" / "stack.tif")
        truth.append(true_counts(folder / f"test{seed}", len(stack)))
        for name, model in models.items():
            predictions[name].append(network_counts(model, stack))
        predictions["spots"].append(spot_counts(stack, sigma, threshold))
    truth = np.concatenate(truth)
    predictions = {k: np.concatenate(v) for k, v in predictions.items()}
    print(machine_facts())
    for tag, timing in timings.items():
        print(
            f"{tag}: {len(TRAINING_STACKS)} stacks x {args.frames} frames, "
            f"configs/default.ini, wall time {timing['seconds'] / 60:.1f} min"
        )
    print(
        f"spot counter tuned on train{TRAINING_STACKS[0][0]}: gaussian sigma {sigma}, "
        f"threshold background + {threshold} x noise"
    )
    print(f"held-out: {len(truth)} frames of 64x64, {truth.min()} to {truth.max()} emitters")
    frame = table(truth, predictions)
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + "---|" * len(frame.columns))
    for row in frame.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
