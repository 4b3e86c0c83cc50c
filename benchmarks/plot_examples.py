"""The example pictures of docs/guide.md, section 4: a counts plot and an overlay.

Simulates a short stack whose density ramps from sparse to crowded
(``defcon simulate --density-sweep``), counts it with the shipped model as
``defcon predict`` does, and writes ``counts-example.png`` (counts per frame)
and ``overlay-example.png`` (one crowded frame, with its true positions) into
OUT (default: docs/).

    python benchmarks/plot_examples.py [OUT]
"""

import sys
import tempfile
import time
from pathlib import Path

from defcon import FCN
from defcon.plots import plot_counts, plot_overlay
from defcon.predict import count_tiff
from defcon.simulate import simulate

FRAMES, HEIGHT, WIDTH, SEED = 400, 48, 64, 1
OVERLAY_FRAME = 300  # 1-based: crowded, three quarters up the sweep


def main(out):
    out = Path(out)
    start = time.perf_counter()
    model = FCN.pretrained()
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate(tmp, FRAMES, HEIGHT, WIDTH, seed=SEED, density_sweep=True)
        result = count_tiff(model, sim["stack"], counts=Path(tmp) / "counts.csv")
        counts = plot_counts(
            result,
            out / "counts-example.png",
            title=f"simulated {FRAMES} frames of {HEIGHT} x {WIDTH} px, density sweep "
            f"(seed {SEED}), counted by FCN.pretrained()",
        )
        overlay = plot_overlay(
            model,
            sim["stack"],
            OVERLAY_FRAME,
            out / "overlay-example.png",
            ground_truth=sim["frame_logger"],
        )
    print(f"{counts.path}: rolling mean over {counts.window} frames, flags {sorted(counts.marked)}")
    print(
        f"{overlay.path}: frame {overlay.frame}, count {overlay.count:.2f}, "
        f"{len(overlay.positions)} true emitters"
    )
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs")
