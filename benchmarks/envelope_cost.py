"""Cost of the training-envelope check in predict_tiff, and the PSF estimator's accuracy.

Usage: python benchmarks/envelope_cost.py [--repeats 5]

1. Cost: ``predict_tiff`` on simulated stacks (2048 frames of 64 x 64, 64 frames
   of 512 x 512) with and without ``check_envelope``, interleaved per repeat;
   medians and their ratio.
2. Accuracy: ``estimate_psf_sigma`` on 128-frame chunks simulated at PSF sigma
   0.7-3.5 px across cameras, brightness, background and density; median and
   range of the estimate per sigma.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _common import machine_facts  # noqa: E402


def cost(repeats):
    import tifffile

    from defcon.networks import FCN
    from defcon.simulate import simulate_stack

    model = FCN.pretrained()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, side in ((2048, 64), (64, 512)):
            stack, _ = simulate_stack(
                n, side, side, seed=1, psf_sigma_px=1.3, density_sweep=(0.5, 0.5)
            )
            path = Path(tmp) / f"{side}.tif"
            tifffile.imwrite(path, stack)
            model.predict_tiff(path, check_envelope=False)  # warm-up: compile, page cache
            times = {True: [], False: []}
            for _ in range(repeats):
                for check in (False, True):
                    start = time.perf_counter()
                    model.predict_tiff(path, check_envelope=check)
                    times[check].append(time.perf_counter() - start)
            off, on = (float(np.median(times[k])) for k in (False, True))
            rows.append((f"{n} x {side}x{side}", off, on))
    print("| stack | without check (s) | with check (s) | ratio |\n|---|---|---|---|")
    for name, off, on in rows:
        print(f"| {name} | {off:.2f} | {on:.2f} | {on / off:.3f} |")


def accuracy():
    from defcon.envelope import estimate_psf_sigma
    from defcon.simulate import simulate_stack

    cases = [
        dict(camera="ccd", photon_rate=3000, background=30, read_noise=6),
        dict(
            camera="emccd", em_gain=150, adu_gain=15, read_noise=50, photon_rate=1000, background=10
        ),
        dict(camera="scmos", photon_rate=1500, background=80, read_noise=1.5, background_haze=1.5),
        dict(camera="ccd", photon_rate=8000, background=200, read_noise=8, defocus_nm=250),
    ]
    print("| PSF sigma (px) | median estimate | range over chunks | chunks without estimate |")
    print("|---|---|---|---|")
    for sigma in (0.7, 1.0, 1.6, 2.2, 2.5, 3.0, 3.5):
        estimates = []
        for k, case in enumerate(cases):
            for density in (0.1, 0.6, 2.0):  # ~4, 25 and 80 emitters per 64 x 64 at 100 nm
                stack, _ = simulate_stack(
                    148,
                    64,
                    64,
                    seed=100 * k + int(10 * density),
                    psf_sigma_px=sigma,
                    density_sweep=(density, density),
                    **case,
                )
                sample = stack[20::16]  # 8 frames of a 128-frame chunk (the check uses <= 4)
                estimates.append(estimate_psf_sigma(sample)[0])
        found = np.array([e for e in estimates if np.isfinite(e)])
        print(
            f"| {sigma} | {np.median(found):.2f} | {found.min():.2f}-{found.max():.2f} | "
            f"{len(estimates) - len(found)} of {len(estimates)} |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(machine_facts())
    accuracy()
    cost(args.repeats)


if __name__ == "__main__":
    main()
