"""Calibration on simulated stacks: recovered vs true imaging conditions.

Draws conditions across the simulator's ranges (defcon.conditions.sample_conditions:
every camera, layout, defocus, gradient and haze), simulates a stack per draw,
calibrates it with and without dark frames (the camera kind given), and prints
the median and worst relative error of each parameter (absolute error, ADU,
for the offset, which can be 0).

    python benchmarks/calibration.py [N_STACKS] [FRAMES]
"""

import sys
import time

import numpy as np
from _common import machine_facts

from defcon import calibrate as K
from defcon.conditions import sample_conditions, simulation_parameters
from defcon.errors import CalibrationError
from defcon.simulate import simulate_stack

SIZE = 64


def truth(c):
    qe = c["quantum_efficiency"]
    return {
        "psf_sigma_px": c["psf_sigma_px"],
        "adu_per_electron": (c["em_gain"] or 1.0) / c["adu_gain"],
        "photons_full_frame": c["photon_rate"] * qe,
        "background_electrons": c["background"] * qe,
        "offset_adu": c["baseline"],
    }


def main(n_stacks=30, n_frames=400):
    errors = {True: [], False: []}
    refused = {True: 0, False: 0}
    bits_right = 0
    start = time.perf_counter()
    for seed in range(n_stacks):
        c = sample_conditions(seed, n_frames=n_frames)
        params = simulation_parameters(c)
        stack, _ = simulate_stack(n_frames, SIZE, SIZE, seed=seed, **params)
        dark_params = {**params, "fluorophore_density": 0.0, "background": 0.0}
        dark_params["density_sweep"] = None
        dark, _ = simulate_stack(50, SIZE, SIZE, seed=seed + 10_000, **dark_params)
        true = truth(c)
        for with_dark in (True, False):
            try:
                r = K.calibrate(stack, dark=dark if with_dark else None, camera=c["camera"])
            except CalibrationError as err:
                refused[with_dark] += 1
                print(f"seed {seed}: {err}", file=sys.stderr)
                continue
            row = {k: r[k] / v - 1 for k, v in true.items() if k != "offset_adu"}
            row["offset_adu"] = r["offset_adu"] - true["offset_adu"]
            row["trusted"] = not r["warnings"]
            errors[with_dark].append(row)
            bits_right += with_dark and r["bit_depth"] == c["bit_depth"]
    elapsed = time.perf_counter() - start
    print(f"{n_stacks} stacks of {n_frames} x {SIZE} x {SIZE} px, {elapsed:.0f} s")
    print(f"machine: {machine_facts()}")
    print("| parameter | dark frames | stacks | median error | worst error |")
    print("|---|---|---|---|---|")
    for with_dark, trusted in ((True, False), (True, True), (False, False), (False, True)):
        rows = [row for row in errors[with_dark] if row["trusted"] or not trusted]
        which = "without warnings" if trusted else "all"
        for key in truth(sample_conditions(0)):
            e = np.array([row[key] for row in rows])
            unit = " ADU" if key == "offset_adu" else " %"
            scale = 1 if key == "offset_adu" else 100
            worst = e[np.argmax(np.abs(e))]
            print(
                f"| {key} | {'yes' if with_dark else 'no'} | {len(e)} ({which}) | "
                f"{scale * np.median(np.abs(e)):.1f}{unit} | {scale * worst:+.1f}{unit} |"
            )
    print(f"refused (too few isolated spots): with dark {refused[True]}, without {refused[False]}")
    print(f"bit depth right (max pixel value) in {bits_right} of {len(errors[True])} stacks")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
