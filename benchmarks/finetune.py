"""Fine-tune to a microscope in three commands, measured on stacks it did not train on.

Usage: python benchmarks/finetune.py [--folder DIR] [--stacks 16] [--frames 250]
                                     [--test-frames 100] [--skip-recipe]

A "microscope" the shipped model handles badly is rendered by a generator of
this file (not defcon's simulator): an Airy PSF (NA 1.3, 680 nm) on 40 nm
pixels (Gaussian-equivalent sigma about 2.8 px, beyond the model's 2.5 px),
emitters with log-normal brightness (median 4,000 photons, a third on for part
of the frame), an EMCCD (EM gain 150, 12 e-/ADU, read noise 40 e-, offset 400
ADU, gamma-distributed EM amplification) on a background of 30 photons/px.

1. DIR/acquisition.tif: 1,000 frames of 96 x 128 px whose density ramps from
   2 to 120 emitters per 64 x 64, as when the activation laser is raised, and
   DIR/dark.tif: 100 frames with the shutter closed.
2. The recipe, each step a defcon command (wall times printed):
   ``defcon calibrate acquisition.tif --dark dark.tif --camera emccd --pixel-size 40``,
   ``defcon simulate --like calib.json --stacks S --frames F --training-set``,
   ``defcon train finetune.ini`` (configs/finetune.ini copied beside the set).
3. Held-out test stacks (64 x 64, other seeds) at fixed densities are counted
   by the shipped model and the fine-tuned one: relative error (sum |error| /
   sum true count) and bias (mean error / mean true count) per density.

An emitter counts in a frame when its photons there exceed 10 % of the median
brightness (defcon.conditions.THRESHOLD_FRACTION), as in training.
"""

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import machine_facts
from scipy import signal, special

PROJECT = Path(__file__).resolve().parents[1]
FINE = 5  # supersampling of the Airy PSF
MICROSCOPE = {
    "na": 1.3,
    "wavelength_nm": 680.0,
    "pixel_nm": 40.0,
    "photons": 4000.0,
    "background": 30.0,
    "em_gain": 150.0,
    "electrons_per_adu": 12.0,
    "read_noise_e": 40.0,
    "offset_adu": 400.0,
}
TEST_DENSITIES = (5, 20, 50, 100)


def airy_kernel(m=MICROSCOPE):
    """Airy intensity on a FINE-times finer grid, normalised to sum 1, shape (K, K)."""
    half = 12
    r = np.arange(-half * FINE, half * FINE + 1) / FINE * m["pixel_nm"]
    v = 2 * math.pi * m["na"] * np.hypot(*np.meshgrid(r, r)) / m["wavelength_nm"]
    with np.errstate(invalid="ignore", divide="ignore"):
        airy = np.where(v > 0, (2 * special.j1(v) / v) ** 2, 1.0)
    return airy / airy.sum()


def render(densities, height, width, seed, m=MICROSCOPE):
    """Frames (n, H, W) uint16 in ADU and true counts (n,), one density per frame."""
    rng = np.random.default_rng(seed)
    kernel = airy_kernel(m)
    stack = np.empty((len(densities), height, width), np.uint16)
    counts = np.empty(len(densities), np.int64)
    area = height * width / 64**2
    for i, density in enumerate(densities):
        n = rng.poisson(density * area)
        photons = m["photons"] * rng.lognormal(0, 0.3, n)
        partial = rng.random(n) < 1 / 3
        photons[partial] *= rng.random(partial.sum())
        counts[i] = int((photons > 0.1 * m["photons"]).sum())
        fine = np.zeros((height * FINE, width * FINE))
        rows, cols = rng.integers(0, height * FINE, n), rng.integers(0, width * FINE, n)
        np.add.at(fine, (rows, cols), photons)
        image = signal.fftconvolve(fine, kernel, mode="same")
        image = image.reshape(height, FINE, width, FINE).sum(axis=(1, 3))
        electrons = rng.poisson(np.clip(image, 0, None) + m["background"])
        amplified = rng.gamma(np.maximum(electrons, 1e-9), m["em_gain"]) * (electrons > 0)
        adu = (amplified + rng.normal(0, m["read_noise_e"], image.shape)) / m["electrons_per_adu"]
        stack[i] = np.clip(np.rint(adu + m["offset_adu"]), 0, 65535)
    return stack, counts


def defcon(*args, cwd):
    """Run a defcon command; return its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "defcon", "--quiet", *args], cwd=cwd, check=True)
    return time.perf_counter() - start


def recipe(folder, stacks, frames):
    """Calibrate, simulate like it, fine-tune; returns wall times (s) per step."""
    times = {}
    times["calibrate"] = defcon(
        "calibrate",
        "acquisition.tif",
        "--dark",
        "dark.tif",
        "--camera",
        "emccd",
        "--pixel-size",
        str(MICROSCOPE["pixel_nm"]),
        "--out",
        "calib.json",
        cwd=folder,
    )
    times["simulate"] = defcon(
        "simulate",
        "--like",
        "calib.json",
        "--stacks",
        str(stacks),
        "--frames",
        str(frames),
        "--out",
        "finetune",
        "--training-set",
        "finetune/compact.h5",
        cwd=folder,
    )
    shutil.copy(PROJECT / "configs" / "finetune.ini", folder / "finetune" / "finetune.ini")
    times["train"] = defcon("train", "finetune/finetune.ini", cwd=folder)
    return times


def errors(model, stack, truth):
    """(relative error, bias) of the model's counts, as fractions of the true total."""
    from defcon.predict import count_tiff

    counts = np.asarray(count_tiff(model, stack, check_envelope=False).counts)
    return np.abs(counts - truth).sum() / truth.sum(), (counts - truth).sum() / truth.sum()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/defcon-finetune"))
    parser.add_argument("--stacks", type=int, default=16)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--test-frames", type=int, default=100)
    parser.add_argument("--skip-recipe", action="store_true", help="reuse DIR's model")
    parser.add_argument(
        "--docs",
        action="store_true",
        help="also write docs/calibration-report.png (the calibration's report) and "
        "docs/finetune.png (counts before and after)",
    )
    args = parser.parse_args()
    folder = args.folder
    folder.mkdir(parents=True, exist_ok=True)
    if not args.skip_recipe:  # a fresh recipe: the last run's training data and model go
        shutil.rmtree(folder / "finetune", ignore_errors=True)
    print(f"machine: {machine_facts()}")
    ramp = np.linspace(2, 120, 1000)
    stack, _ = render(ramp, 96, 128, seed=1)
    tifffile.imwrite(folder / "acquisition.tif", stack, imagej=True)
    dark, _ = render(np.zeros(100), 96, 128, seed=2, m={**MICROSCOPE, "background": 0.0})
    tifffile.imwrite(folder / "dark.tif", dark, imagej=True)
    if not args.skip_recipe:
        times = recipe(folder, args.stacks, args.frames)
        total = sum(times.values())
        steps = ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
        print(f"recipe: {steps}; total {total / 60:.1f} min")
    import json

    calib = json.loads((folder / "calib.json").read_text())
    sigma_nm = 0.21 * MICROSCOPE["wavelength_nm"] / MICROSCOPE["na"]
    print(
        f"calibrated: PSF sigma {calib['psf_sigma_px']:.2f} px (Airy, Gaussian-equivalent "
        f"{sigma_nm / MICROSCOPE['pixel_nm']:.2f}), gain {calib['adu_per_electron']:.2f} ADU/e "
        f"(true {MICROSCOPE['em_gain'] / MICROSCOPE['electrons_per_adu']:.2f}), photons "
        f"{calib['photons_full_frame']:.0f} (true median {MICROSCOPE['photons']:.0f}), "
        f"background {calib['background_electrons']:.1f} (true {MICROSCOPE['background']:.0f})"
    )
    from defcon.networks import FCN

    models = {
        "shipped (defcon-broad-2026c)": FCN.pretrained(),
        "fine-tuned": FCN.from_file(folder / "finetune" / "model" / "finetuned.keras"),
    }
    tests = []
    for k, density in enumerate(TEST_DENSITIES):
        test, truth = render(np.full(args.test_frames, density), 64, 64, seed=100 + k)
        tifffile.imwrite(folder / f"test-{density}.tif", test, imagej=True)
        tests.append((folder / f"test-{density}.tif", truth))
    print("| model | " + " | ".join(f"{d} / frame" for d in TEST_DENSITIES) + " |")
    print("|---|" + "---|" * len(TEST_DENSITIES))
    table = {}
    for name, model in models.items():
        table[name] = [errors(model, path, truth) for path, truth in tests]
        cells = [f"{100 * error:.0f} % ({100 * bias:+.0f} %)" for error, bias in table[name]]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.docs:
        shutil.copy(folder / "calib.png", PROJECT / "docs" / "calibration-report.png")
        plot(table, PROJECT / "docs" / "finetune.png")


def plot(table, path):
    """Bias per test density, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    for name, cells in table.items():
        ax.plot(TEST_DENSITIES, [100 * bias for _, bias in cells], "o-", label=name)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(TEST_DENSITIES, [str(d) for d in TEST_DENSITIES])
    ax.set_xlabel("emitters per 64 x 64 frame (held-out stacks)")
    ax.set_ylabel("count bias (%)")
    ax.set_title("Airy PSF on 40 nm pixels, EMCCD: before and after fine-tuning", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
