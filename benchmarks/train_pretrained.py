"""Train defcon's shipped model from one command: simulate, build, compact, train.

Usage: python benchmarks/train_pretrained.py [--folder DIR] [--stacks 240] [--frames 250]

Steps (each skipped when its output exists in DIR, so an interrupted run resumes):
1. draw the imaging conditions of each stack from defcon.conditions.TRAINING_RANGES
   (seeds 1..STACKS) and simulate it (64 x 64 frames), two stacks at a time;
2. build one TrainingSet (each stack with its own brightness threshold) and a
   shuffled compact set;
3. phase 1, configs/pretrained-warmup.ini: fine-tune the previous shipped model
   (defcon-sim-2026a) end to end for a few epochs (DIR/warmup/);
   phase 2, configs/pretrained.ini: continue without dropout and with a slower
   learning-rate decay (DIR/model/);
   phase 3, configs/pretrained-balance.ini: weigh sparse frames as much as
   crowded ones (DIR/balance/defcon_pretrained.keras);
4. record the training envelope in the model (DIR/balance/defcon-broad-2026b.keras).

Copy the model to defcon/resources/ to ship it. Wall times go to DIR/timings.json.
"""

import argparse
import configparser
import json
import multiprocessing
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def _simulate_one(job):
    from defcon.conditions import sample_conditions, simulation_parameters, write_conditions
    from defcon.simulate import simulate

    folder, seed, frames = job
    out = folder / "stacks" / f"{seed:04d}"
    if (out / "conditions.json").exists():
        return
    conditions = sample_conditions(seed, n_frames=frames)
    simulate(out, frames, 64, 64, seed=seed, **simulation_parameters(conditions))
    write_conditions(conditions, out / "conditions.json")


def simulate_all(folder, n_stacks, frames, workers=2):
    jobs = [(folder, seed, frames) for seed in range(1, n_stacks + 1)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for _ in pool.imap_unordered(_simulate_one, jobs):
            pass


def build_compact(folder, n_stacks):
    from tqdm.auto import tqdm

    from defcon.conditions import read_conditions
    from defcon.datasets import TrainingSet, compact_set

    if (folder / "compact.h5").exists():
        return
    with TrainingSet(folder / "training.h5", "a") as ts:
        for seed in tqdm(range(1, n_stacks + 1), desc="build", unit="stack"):
            name, stack = f"s{seed:04d}", folder / "stacks" / f"{seed:04d}"
            if name in ts.names():
                continue
            threshold = read_conditions(stack / "conditions.json")["brightness_threshold"]
            ts.add_dataset(
                name,
                stack / "stack.tif",
                stack / "frame_logger.csv",
                brightness_threshold=threshold,
            )
    compact_set(folder / "training.h5", folder / "compact.h5", shuffle=True, seed=0, progress=True)


def train_phase(folder, config_name, initial_model=None):
    """Train with configs/<config_name> (paths pointed at folder); skipped when done."""
    from defcon.train import train

    config = configparser.ConfigParser(interpolation=None)
    config.read(PROJECT / "configs" / config_name)
    general = config["General"]
    out = folder / Path(general["OutputDir"])
    if (out / "defcon_pretrained.keras").exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    general["TrainingSetPath"] = str(folder / "compact.h5")
    general["OutputDir"] = str(out)
    general["WeightDir"] = str(folder / Path(general["WeightDir"]))
    general["InitialModel"] = str(initial_model or folder / general["InitialModel"])
    with open(out / config_name, "w") as f:
        config.write(f)
    train(out / config_name, verbose=2)


def previous_model(folder):
    """The previous shipped model, saved where phase 1 starts from."""
    from defcon.networks import FCN

    path = folder / "initial.keras"
    if not path.exists():
        FCN.pretrained("defcon-sim-2026a").save(path)
    return path


def record_envelope(folder):
    from defcon.conditions import TRAINING_RANGES
    from defcon.envelope import Envelope
    from defcon.networks import FCN

    out = folder / "balance" / "defcon-broad-2026b.keras"
    if out.exists():
        return
    model = FCN.from_file(folder / "balance" / "defcon_pretrained.keras")
    model.envelope = Envelope(
        psf_sigma_px=TRAINING_RANGES["psf_sigma_px"][:2],
        emitters_per_frame=(0.0, TRAINING_RANGES["emitters_per_frame"][1]),
        description="defcon-broad-2026b: defcon-sim-2026a fine-tuned end to end in three "
        "phases on 60,000 "
        "simulated 64 x 64 frames (240 stacks) whose conditions were drawn from "
        "defcon.conditions.TRAINING_RANGES (benchmarks/train_pretrained.py)",
    )
    model.save(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/defcon-pretrained", type=Path)
    parser.add_argument("--stacks", type=int, default=240)
    parser.add_argument("--frames", type=int, default=250, help="frames per stack")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    timings_file = args.folder / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for step, run in (
        ("simulate", lambda: simulate_all(args.folder, args.stacks, args.frames)),
        ("build", lambda: build_compact(args.folder, args.stacks)),
        (
            "warm-up",
            lambda: train_phase(args.folder, "pretrained-warmup.ini", previous_model(args.folder)),
        ),
        ("train", lambda: train_phase(args.folder, "pretrained.ini")),
        ("balance", lambda: train_phase(args.folder, "pretrained-balance.ini")),
        ("envelope", lambda: record_envelope(args.folder)),
    ):
        start = time.perf_counter()
        run()
        timings.setdefault(step, time.perf_counter() - start)
        timings_file.write_text(json.dumps(timings, indent=2))
        print(f"{step}: {timings[step] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
