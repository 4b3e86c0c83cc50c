"""Inference speed, bfloat16 accuracy and peak memory of defcon.predict, on any Keras backend.

Speed: Mpx/s of ``predict_stack`` (float32 and bfloat16) against plain
``keras.Model.predict`` (and on TensorFlow the model called in a
``tf.function``), on the same in-memory frames, and against the fp32 compute
limit measured in the same loop (sgemm GFLOP/s of numpy and of the backend's
compiled ``keras.ops.matmul``, 2048 x 2048, the faster one, divided by
20.3 kFLOP per pixel). Every variant runs once per repeat, interleaved, and the
table gives medians, so load from other processes hits all of them alike; the
``cpu`` column is this process's CPU time / (wall time x cores): below 1 the
machine was shared and absolute figures are low, ratios still hold.

Usage::

    python benchmarks/predict.py                      # speed table + bf16 accuracy
    KERAS_BACKEND=torch python benchmarks/predict.py --sizes 64,256 --no-accuracy
    python benchmarks/predict.py --batch-sweep        # Mpx/s against batch pixels
    python benchmarks/predict.py --intra 2 --inter 1  # TensorFlow thread pools
    python benchmarks/predict.py --memory             # 20,000 x 256 x 256 uint16 stack
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    FLOP_PER_PIXEL,
    backend_matmul,
    machine_facts,
    numpy_matmul,
    peak_rss_mib,
)

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
#: (frame side, frames): about 2-4 Mpx per call.
SIZES = {64: 512, 256: 32, 1024: 2, 2048: 1}


def load_model():
    from defcon.networks import FCN

    path = REFERENCE / "defcon_tf13.h5"
    if path.exists():
        return FCN.from_file(path)
    print(f"({path} absent: random weights)")
    return FCN(output="density", seed=0)


def sgemm(n=2048):
    """Callables timing one n x n float32 matmul (numpy, the Keras backend), and its FLOPs."""
    import keras

    (np_mm, flops), (backend_mm, _) = numpy_matmul(n), backend_matmul(n)
    return {"sgemm np": np_mm, f"sgemm {keras.backend.backend()}": backend_mm}, flops


def in_graph(model):
    """The model called in a ``tf.function`` (TensorFlow), else None."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    graph = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return lambda x: graph(tf.constant(x)).numpy()


def interleaved(calls, repeats):
    """Median wall seconds of each callable, run round-robin; and the CPU share."""
    for call in calls.values():
        call()
    times = {k: [] for k in calls}
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for k, call in calls.items():
            t = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t)
    share = (time.process_time() - cpu) / (time.perf_counter() - wall) / os.cpu_count()
    return {k: float(np.median(v)) for k, v in times.items()}, share


def speed_table(model, repeats, sizes):
    from defcon.predict import predict_stack

    matmuls, flops = sgemm()
    graph = in_graph(model)
    variants = ("predict", "tf.func", "fp32", "bf16") if graph else ("predict", "fp32", "bf16")
    header = (
        "frame",
        "frames",
        *variants,
        "fp32 frames/s",
        *matmuls,
        "limit",
        "fp32 %",
        "bf16 %",
        "fp32/pred",
        "bf16/fp32",
        "cpu",
    )
    print(
        f"Mpx/s (medians of {repeats} interleaved repeats); sgemm in GFLOP/s; limit = best "
        f"sgemm / {FLOP_PER_PIXEL / 1e3:.1f} kFLOP/px, in Mpx/s"
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    for side in sizes:
        n = SIZES.get(side, max(1, (1 << 21) // (side * side)))
        frames = (100 + 900 * rng.random((n, side, side))).astype(np.float32)
        x4 = frames[..., None]
        calls = {
            "predict": lambda: model.predict(x4, verbose=0),
            "tf.func": lambda: graph(x4),
            "fp32": lambda: predict_stack(model, frames, precision="float32"),
            "bf16": lambda: predict_stack(model, frames, precision="bfloat16"),
        }
        calls = {**{k: calls[k] for k in variants}, **matmuls}
        t, share = interleaved(calls, repeats)
        mpx = {k: n * side * side / t[k] / 1e6 for k in variants}
        gflops = {k: flops / t[k] / 1e9 for k in matmuls}
        limit = max(gflops.values()) * 1e9 / FLOP_PER_PIXEL / 1e6
        row = (
            f"{side}x{side}",
            n,
            *(f"{mpx[k]:.2f}" for k in mpx),
            f"{n / t['fp32']:.0f}",
            *(f"{g:.0f}" for g in gflops.values()),
            f"{limit:.2f}",
            f"{100 * mpx['fp32'] / limit:.0f}",
            f"{100 * mpx['bf16'] / limit:.0f}",
            f"{mpx['fp32'] / mpx['predict']:.2f}",
            f"{mpx['bf16'] / mpx['fp32']:.2f}",
            f"{share:.2f}",
        )
        print("| " + " | ".join(str(c) for c in row) + " |", flush=True)


def bf16_accuracy(model):
    from defcon.predict import predict_stack
    from defcon.simulate import simulate_stack
    from defcon.tiffio import tiff_to_array

    sets = {}
    if (REFERENCE / "defcon-imagej" / "test_data.tif").exists():
        sets["test_data.tif (10 x 32x32)"] = tiff_to_array(
            REFERENCE / "defcon-imagej" / "test_data.tif"
        )
    sets["simulated, sweep 0.05-3 /um2 (300 x 64x64)"] = simulate_stack(
        300, 64, 64, seed=1, density_sweep=(0.05, 3.0)
    )[0]
    sets["simulated, 2-6 /um2 (8 x 256x256)"] = simulate_stack(
        8, 256, 256, seed=2, density_sweep=(2.0, 6.0)
    )[0]
    print("\nbfloat16 count deviation from float32 (frames with a float32 count >= 1)")
    print("| data | fp32 count median | max | mean dev | mean abs dev | max abs dev |")
    print("|---|---|---|---|---|---|")
    for name, x in sets.items():
        c32 = predict_stack(model, x).sum(axis=(1, 2, 3), dtype=np.float64)
        c16 = predict_stack(model, x, precision="bfloat16").sum(axis=(1, 2, 3), dtype=np.float64)
        keep = c32 >= 1
        rel = (c16 - c32)[keep] / c32[keep]
        print(
            f"| {name} | {np.median(c32):.1f} | {c32.max():.1f} | {100 * rel.mean():+.2f} % | "
            f"{100 * np.abs(rel).mean():.2f} % | {100 * np.abs(rel).max():.2f} % |"
        )


def batch_sweep(model, repeats):
    from defcon.predict import predict_stack

    rng = np.random.default_rng(0)
    print("\nMpx/s against batch size (pixels per network call)")
    print("| frame | batch px | fp32 | bf16 |")
    print("|---|---|---|---|")
    for side, n in ((64, 1024), (256, 64)):
        frames = (100 + 900 * rng.random((n, side, side))).astype(np.float32)
        for batch_px in (1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22):
            batch = max(1, batch_px // (side * side))
            calls = {
                p: (lambda p=p: predict_stack(model, frames, batch, precision=p))
                for p in ("float32", "bfloat16")
            }
            t, _ = interleaved(calls, repeats)
            print(
                f"| {side} | {batch * side * side} | "
                + " | ".join(f"{n * side * side / t[p] / 1e6:.2f}" for p in calls)
                + " |",
                flush=True,
            )


def memory_run(model, n_frames, side, precision):
    import tifffile

    from defcon.predict import DEFAULT_PRECISION, count_tiff
    from defcon.simulate import simulate_stack

    pool = simulate_stack(32, side, side, seed=3, density_sweep=(0.5, 3.0))[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("DEFCON_BENCH_TMP")) as tmp:
        stack = Path(tmp) / "big.tif"
        with tifffile.TiffWriter(stack, bigtiff=True) as tw:
            for i in range(n_frames):
                tw.write(pool[i % len(pool)], contiguous=True, photometric="minisblack")
        size_gb = stack.stat().st_size / 1e9
        before = peak_rss_mib()
        t = time.perf_counter()
        counts = count_tiff(
            model,
            stack,
            density_output=Path(tmp) / "density.tif",
            progress=True,
            precision=precision,
        ).counts
        dt = time.perf_counter() - t
        out_gb = (Path(tmp) / "density.tif").stat().st_size / 1e9
    rate = n_frames * side * side / dt / 1e6
    print(
        f"\n{n_frames} frames {side}x{side} uint16 ({size_gb:.2f} GB) -> density.tif "
        f"({out_gb:.2f} GB), {precision or DEFAULT_PRECISION}: {dt:.0f} s, {rate:.2f} Mpx/s, "
        f"mean count {counts.mean():.1f}"
    )
    print(
        f"peak RSS {peak_rss_mib():.0f} MiB (after loading the backend and the model: "
        f"{before:.0f} MiB)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="64,256,1024,2048")
    parser.add_argument("--batch-sweep", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--intra", type=int, help="tf.config.threading intra-op threads")
    parser.add_argument("--inter", type=int, help="tf.config.threading inter-op threads")
    parser.add_argument("--memory", action="store_true", help="run the big-stack memory test")
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--precision", default=None, help="precision of the memory run")
    args = parser.parse_args()

    import keras

    from defcon.backends import backend_version

    backend = keras.backend.backend()
    threads = ""
    if backend == "tensorflow":
        import tensorflow as tf

        if args.intra:
            tf.config.threading.set_intra_op_parallelism_threads(args.intra)
        if args.inter:
            tf.config.threading.set_inter_op_parallelism_threads(args.inter)
        threads = (
            f"; TF threads intra={tf.config.threading.get_intra_op_parallelism_threads()} "
            f"inter={tf.config.threading.get_inter_op_parallelism_threads()} (0 = default)"
        )
    elif args.intra or args.inter:
        parser.error(f"--intra and --inter set TensorFlow's thread pools; Keras runs on {backend}")
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(
            f"{i['internal_api']} {i.get('architecture', '')}" for i in threadpool_info()
        )
    except ImportError:
        blas = "unknown (pip install threadpoolctl to show it)"
    print(
        machine_facts() + f", Keras {keras.__version__} on {backend} {backend_version(backend)}, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"numpy BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}" + threads)
    model = load_model()
    if args.memory:
        memory_run(model, args.frames, args.side, args.precision)
        return
    speed_table(model, args.repeats, [int(s) for s in args.sizes.split(",")])
    if args.batch_sweep:
        batch_sweep(model, args.repeats)
    if not args.no_accuracy:
        bf16_accuracy(model)


if __name__ == "__main__":
    main()
