"""Counting on imaging conditions the models were not trained on.

Usage: python benchmarks/generalisation.py [--model M.keras] [--previous NAME] [--frames 60]
                                          [--out DIR]

A grid of imaging conditions x densities (emitters per 64 x 64 frame). Five
conditions lie inside the shipped model's training ranges (new seeds and
parameter combinations); four are held out: an Airy PSF and a ring layout
(nuclear-pore-like) rendered by an independent generator in this file (its
own PSF, noise and photophysics code), a PSF of sigma 3 px (outside the
envelope) and emitters of ~120 photons (below the photon range). Each cell is
counted by (a) the shipped model (or --model), (b) the published DEFCoN model,
(c) a classical spot counter (Gaussian filter + local maxima, tuned on stacks
drawn from the training ranges) and (d) a previous shipped model
(--previous, default defcon-broad-2026b). Per cell: mean true count, MAE, bias and relative error
(sum |error| / sum true count), and the fraction of 16-frame chunks the
envelope check flags (PSF width, chunks of 128 frames). Writes
DIR/generalisation.csv, DIR/generalisation.png and prints a markdown table.

An emitter counts in a frame when its photons in that frame exceed 10 % of
the median photons of an emitter on for the whole frame
(defcon.conditions.THRESHOLD_FRACTION).
"""

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import machine_facts, spot_counts
from scipy import signal, special

PROJECT = Path(__file__).resolve().parents[1]
REFERENCE_MODEL = PROJECT.parent / "shared" / "reference" / "defcon_tf13.h5"
DENSITIES = (3, 30, 80, 200, 330)
SIZE = 64
WARM_UP = 20  # frames a constant-density blinking stack needs to fill up

#: name -> (generator, parameters, held out because...)
CONDITIONS = {
    "sigma 0.9, EMCCD, 2500 ph": (
        "defcon",
        dict(
            psf_sigma_px=0.9,
            photon_rate=2500,
            background=30,
            camera="emccd",
            em_gain=100,
            adu_gain=12,
            read_noise=50,
            photon_spread=0.3,
        ),
        "",
    ),
    "sigma 1.6, sCMOS (65 nm px)": (
        "defcon",
        dict(
            psf_sigma_px=1.6,
            photon_rate=2000,
            background=50,
            camera="scmos",
            read_noise=1.5,
            adu_gain=0.5,
            camera_pixel_nm=6500,
            magnification=100,
            photon_spread=0.3,
        ),
        "",
    ),
    "sigma 2.2, defocus, haze, CCD": (
        "defcon",
        dict(
            psf_sigma_px=2.2,
            defocus_nm=250,
            photon_rate=6000,
            background=150,
            background_haze=1.0,
            camera="ccd",
            read_noise=8,
            adu_gain=2,
            bit_depth=14,
        ),
        "",
    ),
    "filaments, sigma 1.2, sCMOS": (
        "defcon",
        dict(
            psf_sigma_px=1.2,
            photon_rate=1500,
            background=20,
            camera="scmos",
            read_noise=1.6,
            adu_gain=0.46,
            layout="filaments",
            n_structures=5,
            structure_spread_px=0.3,
        ),
        "",
    ),
    "clusters, sigma 1.3, dim EMCCD": (
        "defcon",
        dict(
            psf_sigma_px=1.3,
            photon_rate=700,
            background=8,
            camera="emccd",
            em_gain=200,
            adu_gain=20,
            read_noise=60,
            layout="clustered",
            n_structures=12,
            structure_spread_px=2.0,
        ),
        "",
    ),
    "Airy PSF (NA 1.4, 670 nm, 100 nm px)": (
        "independent",
        dict(psf="airy", photons=2500, background=40),
        "PSF model not trained on",
    ),
    "rings (NPC-like), sigma 1.1": (
        "independent",
        dict(psf="gauss", sigma=1.1, photons=2000, background=25, layout="rings"),
        "layout not trained on",
    ),
    "sigma 3.0 (outside envelope)": (
        "defcon",
        dict(
            psf_sigma_px=3.0,
            photon_rate=5000,
            background=40,
            camera="ccd",
            read_noise=6,
            adu_gain=1,
        ),
        "PSF wider than the training range",
    ),
    "120 photons (below range)": (
        "defcon",
        dict(
            psf_sigma_px=1.0,
            photon_rate=120,
            background=2,
            camera="emccd",
            em_gain=300,
            adu_gain=30,
            read_noise=60,
        ),
        "dimmer than the training range",
    ),
}


# --------------------------------------------------------------- stacks
def defcon_stack(params, density, frames, seed):
    """A constant-density blinking stack from defcon.simulate, warm-up frames dropped."""
    from defcon.conditions import THRESHOLD_FRACTION
    from defcon.groundtruth import count_per_frame
    from defcon.simulate import SimulationParameters, simulate_stack

    pixel_um = SimulationParameters(**params).pixel_size_nm / 1000
    per_um2 = density / (SIZE * SIZE * pixel_um**2)
    n = frames + WARM_UP
    stack, truth = simulate_stack(
        n,
        SIZE,
        SIZE,
        seed=seed,
        density_sweep=(per_um2, per_um2),
        fluorophore_density=max(2000.0, 3 * per_um2 * n),
        **params,
    )
    counts = count_per_frame(
        truth, n, THRESHOLD_FRACTION * params["photon_rate"], height=SIZE, width=SIZE
    )
    return stack[WARM_UP:], counts[WARM_UP:]


def independent_stack(params, density, frames, seed):
    """Frames from an independent generator: emitters drawn afresh each frame.

    Each frame holds Poisson(density) emitters with log-normal brightness
    (median ``photons``, sigma 0.3), a third of them on for a uniform fraction
    of the frame. The PSF is a pixel-integrated Gaussian or an Airy pattern
    ``[2 J1(v) / v]²`` with ``v = 2 pi NA r / lambda`` (NA 1.4, 670 nm,
    100 nm pixels), integrated on a 5x finer grid. Poisson photons, Gaussian
    read noise of 1.5 e-, offset 100 ADU.
    """
    rng = np.random.default_rng(seed)
    stack = np.empty((frames, SIZE, SIZE), np.uint16)
    counts = np.empty(frames, np.int64)
    kernel = _airy_kernel() if params["psf"] == "airy" else None
    for i in range(frames):
        n = rng.poisson(density)
        x, y = _positions(params.get("layout", "uniform"), n, rng)
        photons = params["photons"] * rng.lognormal(0, 0.3, n)
        partial = rng.random(n) < 1 / 3
        photons[partial] *= rng.random(partial.sum())
        counts[i] = int((photons > 0.1 * params["photons"]).sum())
        if kernel is None:
            from defcon.simulate import render_emitters

            image = render_emitters(x, y, photons, SIZE, SIZE, params["sigma"])
        else:
            image = _render_supersampled(x, y, photons, kernel)
        electrons = rng.poisson(image + params["background"]) + rng.normal(0, 1.5, image.shape)
        stack[i] = np.clip(np.rint(electrons + 100), 0, 65535)
    return stack, counts


_RING_CENTRES = np.random.default_rng(7).uniform(2, SIZE - 2, (60, 2))


def _positions(layout, n, rng):
    if layout == "uniform":
        return rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n)
    # Rings of radius 0.55 px (55 nm) with 8 binding sites, as nuclear pores.
    centre = _RING_CENTRES[rng.integers(len(_RING_CENTRES), size=n)]
    angle = rng.integers(8, size=n) * (2 * math.pi / 8)
    jitter = rng.normal(0, 0.05, (n, 2))
    return (
        centre[:, 0] + 0.55 * np.cos(angle) + jitter[:, 0],
        centre[:, 1] + 0.55 * np.sin(angle) + jitter[:, 1],
    )


_FINE = 5


def _airy_kernel(na=1.4, wavelength_nm=670, pixel_nm=100, half=6):
    """Airy intensity on a 5x finer grid, normalised to sum 1, shape (K, K)."""
    r = (np.arange(-half * _FINE, half * _FINE + 1) + 0.0) / _FINE * pixel_nm
    rr = np.hypot(*np.meshgrid(r, r))
    v = 2 * math.pi * na * rr / wavelength_nm
    with np.errstate(invalid="ignore", divide="ignore"):
        airy = np.where(v > 0, (2 * special.j1(v) / v) ** 2, 1.0)
    return airy / airy.sum()


def _render_supersampled(x, y, photons, kernel):
    fine = np.zeros((SIZE * _FINE, SIZE * _FINE))
    cols = np.clip((x * _FINE).astype(int), 0, SIZE * _FINE - 1)
    rows = np.clip((y * _FINE).astype(int), 0, SIZE * _FINE - 1)
    np.add.at(fine, (rows, cols), photons)
    fine = signal.fftconvolve(fine, kernel, mode="same")
    return fine.reshape(SIZE, _FINE, SIZE, _FINE).sum(axis=(1, 3))


def make_stack(condition, density, frames, seed):
    kind, params, _ = CONDITIONS[condition]
    make = defcon_stack if kind == "defcon" else independent_stack
    return make(params, density, frames, seed)


# --------------------------------------------------------------- counters
def tune_spot_counter(n_stacks=6, frames=100):
    """Filter width and threshold with the lowest MAE on stacks from the training ranges."""
    from defcon.conditions import sample_conditions, simulation_parameters
    from defcon.groundtruth import count_per_frame
    from defcon.simulate import simulate_stack

    data = []
    for seed in range(10_001, 10_001 + n_stacks):
        conditions = sample_conditions(seed, n_frames=frames)
        stack, truth = simulate_stack(
            frames, SIZE, SIZE, seed=seed, **simulation_parameters(conditions)
        )
        data.append(
            (
                stack,
                count_per_frame(
                    truth, frames, conditions["brightness_threshold"], height=SIZE, width=SIZE
                ),
            )
        )
    best = None
    for sigma in (0.8, 1.0, 1.5, 2.0):
        for threshold in (2.0, 3.0, 4.0, 6.0, 8.0):
            mae = np.mean([np.abs(spot_counts(s, sigma, threshold) - t).mean() for s, t in data])
            if best is None or mae < best[0]:
                best = (mae, sigma, threshold)
    return best[1:]


def envelope_flags(model, chunks=8, chunk_frames=128):
    """Per condition: the fraction of prediction chunks whose PSF width is flagged.

    Chunks of 128 frames (what ``predict`` runs at 64 x 64) at densities drawn
    from 3-100 emitters per frame, checked as ``predict`` does.
    """
    from defcon.conditions import TRAINING_RANGES
    from defcon.envelope import Envelope, EnvelopeCheck

    envelope = model.envelope or Envelope(TRAINING_RANGES["psf_sigma_px"][:2])
    rates = {}
    rng = np.random.default_rng(5)
    for c, condition in enumerate(CONDITIONS):
        check = EnvelopeCheck(envelope, (SIZE, SIZE))
        for k in range(chunks):
            stack, _ = make_stack(
                condition, float(rng.uniform(3, 100)), chunk_frames, seed=50_000 + 100 * c + k
            )
            frames = np.arange(k * chunk_frames, (k + 1) * chunk_frames)
            check.observe(frames, stack)
            check.flags(frames, np.zeros((chunk_frames, 1, 1, 1)))
        rates[condition] = np.mean([bool(ch["flag"]) for ch in check.chunks])
        sigmas = [ch["psf_sigma_px"] for ch in check.chunks]
        print(
            f"{condition}: flagged {100 * rates[condition]:.0f} % of chunks, PSF sigma "
            f"estimates {np.nanmin(sigmas):.2f}-{np.nanmax(sigmas):.2f} px",
            flush=True,
        )
    return rates


# --------------------------------------------------------------- report
def run(models, frames, spot_params):
    rows = []
    for c, condition in enumerate(CONDITIONS):
        for d, density in enumerate(DENSITIES):
            stack, truth = make_stack(condition, density, frames, seed=1000 + 10 * c + d)
            estimates = {}
            for name, model in models.items():
                estimates[name] = model.predict_stack(stack).sum(axis=(1, 2, 3))
            estimates["spot counter"] = spot_counts(stack, *spot_params)
            for name, counts in estimates.items():
                error = counts - truth
                rows.append(
                    {
                        "condition": condition,
                        "held_out": CONDITIONS[condition][2],
                        "density": density,
                        "model": name,
                        "true": truth.mean(),
                        "predicted": counts.mean(),
                        "mae": np.abs(error).mean(),
                        "bias": error.mean(),
                        "rel_error": np.abs(error).sum() / max(truth.sum(), 1),
                        "rel_bias": error.sum() / max(truth.sum(), 1),
                    }
                )
            print(f"{condition} / {density}: done", flush=True)
    return pd.DataFrame(rows)


def plot(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(CONDITIONS)
    fig, axes = plt.subplots(3, 3, figsize=(12, 11), sharex=False)
    for ax, condition in zip(axes.flat, conditions):
        sub = table[table.condition == condition]
        for name, marker in zip(sub.model.unique(), "osd^"):
            m = sub[sub.model == name]
            ax.plot(m["true"], m["predicted"], marker=marker, label=name)
        top = max(sub["true"].max(), 1) * 1.1
        ax.plot([0, top], [0, top], color="grey", lw=0.8, ls="--")
        ax.set_title(condition + ("\n(held out)" if CONDITIONS[condition][2] else ""), fontsize=9)
        ax.set_xlabel("true count per frame")
        ax.set_ylabel("predicted count per frame")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Counting on held-out imaging conditions (mean per cell, 64 x 64 frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(table, flag_rates):
    wide = table.pivot_table(
        index=["condition", "density"],
        columns="model",
        values=["rel_error", "rel_bias"],
        sort=False,
    )
    true = table[table.model == "shipped"].set_index(["condition", "density"])
    names = list(dict.fromkeys(table.model))
    lines = [
        "| condition | density | true | "
        + " | ".join(f"{n} rel. err (bias)" for n in names)
        + " | PSF flagged |",
        "|---|---|---|" + "---|" * (len(names) + 1),
    ]
    for (condition, density), row in wide.iterrows():
        cells = [
            f"{100 * row[('rel_error', n)]:.1f} % ({100 * row[('rel_bias', n)]:+.1f})"
            for n in names
        ]
        t = true.loc[(condition, density)]
        lines.append(
            f"| {condition} | {density} | {t['true']:.1f} | "
            + " | ".join(cells)
            + f" | {100 * flag_rates[condition]:.0f} % |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model to test as 'shipped' (default FCN.pretrained())")
    parser.add_argument(
        "--previous", default="defcon-broad-2026b", help="shipped model to compare with"
    )
    parser.add_argument("--frames", type=int, default=60, help="frames per cell (60)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/defcon-generalisation"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from defcon.networks import FCN

    models = {"shipped": FCN.from_file(args.model) if args.model else FCN.pretrained()}
    if REFERENCE_MODEL.exists():
        models["DEFCoN"] = FCN.from_file(REFERENCE_MODEL)
    models["previous"] = FCN.pretrained(args.previous)
    start = time.perf_counter()
    spot_params = tune_spot_counter()
    table = run(models, args.frames, spot_params)
    table.to_csv(args.out / "generalisation.csv", index=False)
    flag_rates = envelope_flags(models["shipped"])
    plot(table, args.out / "generalisation.png")
    print(machine_facts())
    print(
        f"spot counter: gaussian sigma {spot_params[0]}, threshold {spot_params[1]} x noise; "
        f"{args.frames} frames per cell; {time.perf_counter() - start:.0f} s"
    )
    print(markdown(table, flag_rates))
    inside = table[(table.held_out == "") & (table.model == "shipped")]
    print(
        f"shipped model inside the envelope: max |rel. bias| "
        f"{100 * inside.rel_bias.abs().max():.1f} %, max rel. error "
        f"{100 * inside.rel_error.max():.1f} %"
    )


if __name__ == "__main__":
    main()
