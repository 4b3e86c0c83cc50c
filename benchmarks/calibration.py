"""Calibration on simulated stacks: recovered vs true imaging conditions.

Draws conditions across the simulator's ranges (defcon.conditions.sample_conditions:
every camera, layout, defocus, gradient and haze), simulates a stack per draw,
calibrates it with and without dark frames (the camera kind given), and prints
per parameter the median and worst relative error (absolute error, ADU, for the
offset, which can be 0) and the fraction of stacks within :data:`TOLERANCE`.

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
#: Relative tolerance per parameter (the goals: PSF, gain, offset 5 %, photons
#: 10 %; the background has no goal, 10 % is shown). The offset is within
#: tolerance when off by at most 5 % of the true offset or 1 ADU, whichever is larger.
TOLERANCE = {
    "psf_sigma_px": 0.05,
    "adu_per_electron": 0.05,
    "photons_full_frame": 0.10,
    "background_electrons": 0.10,
    "offset_adu": 0.05,
}
OFFSET_FLOOR_ADU = 1.0


def truth(c):
    qe = c["quantum_efficiency"]
    return {
        "psf_sigma_px": c["psf_sigma_px"],
        "adu_per_electron": (c["em_gain"] or 1.0) / c["adu_gain"],
        "photons_full_frame": c["photon_rate"] * qe,
        "background_electrons": c["background"] * qe,
        "offset_adu": c["baseline"],
    }


def dark_parameters(params):
    """Simulation keywords of dark frames from the same camera as a stack of ``params``.

    Same seed and the same random draws up to the camera's (so the same sCMOS
    offset, gain and read-noise maps), but no light: no emitter photons, no
    fiducial photons, no background.
    """
    return {**params, "photon_rate": 0.0, "fiducial_photons": 0.0, "background": 0.0,
            "density_sweep": None}  # fmt: skip


def errors_of(result, true):
    """Relative errors (absolute, ADU, for the offset) and whether each is within tolerance."""
    row = {k: result[k] / v - 1 for k, v in true.items() if k != "offset_adu"}
    row["offset_adu"] = result["offset_adu"] - true["offset_adu"]
    ok = {k: abs(row[k]) <= TOLERANCE[k] for k in row}
    ok["offset_adu"] = abs(row["offset_adu"]) <= max(
        TOLERANCE["offset_adu"] * true["offset_adu"], OFFSET_FLOOR_ADU
    )
    return row, ok


def main(n_stacks=30, n_frames=400):
    errors = {True: [], False: []}
    refused = {True: 0, False: 0}
    bits_right = 0
    seconds = []
    start = time.perf_counter()
    for seed in range(n_stacks):
        c = sample_conditions(seed, n_frames=n_frames)
        params = simulation_parameters(c)
        stack, _ = simulate_stack(n_frames, SIZE, SIZE, seed=seed, **params)
        dark, _ = simulate_stack(50, SIZE, SIZE, seed=seed, **dark_parameters(params))
        true = truth(c)
        for with_dark in (True, False):
            t0 = time.perf_counter()
            try:
                r = K.calibrate(stack, dark=dark if with_dark else None, camera=c["camera"])
            except CalibrationError as err:
                refused[with_dark] += 1
                print(f"seed {seed}: {err}", file=sys.stderr)
                continue
            finally:
                seconds.append(time.perf_counter() - t0)
            row, ok = errors_of(r, true)
            row["ok"], row["trusted"], row["seed"] = ok, not r["warnings"], seed
            errors[with_dark].append(row)
            bits_right += with_dark and r["bit_depth"] == c["bit_depth"]
    elapsed = time.perf_counter() - start
    print(
        f"{n_stacks} stacks of {n_frames} x {SIZE} x {SIZE} px, {elapsed:.0f} s "
        f"(calibrate: median {np.median(seconds):.1f} s, max {max(seconds):.1f} s per call)"
    )
    print(f"machine: {machine_facts()}")
    print("| parameter | dark frames | stacks | median error | worst error | within tolerance |")
    print("|---|---|---|---|---|---|")
    for with_dark, trusted in ((True, False), (True, True), (False, False), (False, True)):
        rows = [row for row in errors[with_dark] if row["trusted"] or not trusted]
        which = "without warnings" if trusted else "all"
        for key in TOLERANCE:
            e = np.array([row[key] for row in rows])
            if not len(e):
                continue
            within = np.mean([row["ok"][key] for row in rows])
            unit = " ADU" if key == "offset_adu" else " %"
            scale = 1 if key == "offset_adu" else 100
            worst = e[np.argmax(np.abs(e))]
            tol = f"5 % or {OFFSET_FLOOR_ADU:g} ADU" if key == "offset_adu" else ""
            tol = tol or f"{100 * TOLERANCE[key]:g} %"
            print(
                f"| {key} | {'yes' if with_dark else 'no'} | {len(e)} ({which}) | "
                f"{scale * np.median(np.abs(e)):.1f}{unit} | {scale * worst:+.1f}{unit} | "
                f"{100 * within:.0f} % (±{tol}) |"
            )
    print(f"refused (too few isolated spots): with dark {refused[True]}, without {refused[False]}")
    print(f"bit depth right (max pixel value) in {bits_right} of {len(errors[True])} stacks")
    for with_dark in (True, False):
        for row in errors[with_dark]:
            missed = [k for k, good in row["ok"].items() if not good]
            if missed:
                details = ", ".join(
                    f"{k} {row[k]:+.1f} ADU" if k == "offset_adu" else f"{k} {100 * row[k]:+.1f} %"
                    for k in missed
                )
                dark = "with" if with_dark else "without"
                print(f"seed {row['seed']} ({dark} dark frames): {details}", file=sys.stderr)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
