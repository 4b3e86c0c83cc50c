"""Latency of live counting: ``defcon.live.Counter.push``, one frame per call.

Median and 99th percentile of the time from push to result (network, padding,
count and maximum local count), per frame, with the shipped model
(``FCN.pretrained()``), after a warm-up, for 256 x 256 and 2048 x 2048 uint16
frames (a pool of 8 different synthetic frames, pushed in turn). With
``--compare``, the same single frames also go through ``predict_stack`` and a
``tf.function`` of the Keras model, each followed by the same count and maximum
local count, interleaved with the push: how the live path was chosen. The
``cpu`` column is this process's CPU time / (wall time x cores): below 1 the
machine was shared or idle between calls.

Usage::

    python benchmarks/live.py                  # 300 frames of 256 x 256, 30 of 2048 x 2048
    python benchmarks/live.py --compare        # + predict_stack and Keras on the same frames
    python benchmarks/live.py --frames 256:1000 --frames 1024:50
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from _common import machine_facts  # noqa: E402

DEFAULT_FRAMES = {256: 300, 2048: 30}
WARM_UP = 3


def frame_pool(side, n=8, seed=0):
    """``n`` uint16 frames (side, side): background, Gaussian spots, Poisson noise."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(n):
        frame = np.full((side, side), 100.0, np.float32)
        for y, x in rng.uniform(3, side - 3, (side * side // 1000 + 1, 2)):
            y0, x0 = int(y) - 3, int(x) - 3
            yy, xx = np.mgrid[y0 : y0 + 7, x0 : x0 + 7] + 0.5
            frame[y0 : y0 + 7, x0 : x0 + 7] += 1000 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.4)
        pool.append(rng.poisson(frame).astype(np.uint16))
    return pool


def calls(model, counter, compare):
    """``{name: f(frame)}`` of the timed paths: the live push, and others with ``compare``."""
    out = {"Counter.push": counter.push}
    if compare:
        import tensorflow as tf

        from defcon.predict import _pad, count_rows, padded_side, predict_stack

        keras_fn = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)],
        )

        def keras_call(frame):
            h, w = (padded_side(n) for n in frame.shape)
            density = keras_fn(_pad(frame[np.newaxis], h, w)).numpy()
            return count_rows(density[:, : frame.shape[0], : frame.shape[1]], [0])

        out["predict_stack (1 frame)"] = lambda frame: count_rows(predict_stack(model, frame), [0])
        out["keras tf.function (1 frame)"] = keras_call
    return out


def latencies(paths, pool, n):
    """Seconds per call of every path, ``{name: ndarray (n,)}``, interleaved; and the CPU share."""
    for call in paths.values():
        for frame in pool[:WARM_UP]:
            call(frame)
    times = {k: np.empty(n) for k in paths}
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        frame = pool[i % len(pool)]
        for k, call in paths.items():
            t = time.perf_counter()
            call(frame)
            times[k][i] = time.perf_counter() - t
    share = (time.process_time() - cpu) / (time.perf_counter() - wall) / os.cpu_count()
    return times, share


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frames",
        action="append",
        metavar="SIDE:N",
        help="frame side and number of timed frames (repeatable; default 256:300 2048:30)",
    )
    parser.add_argument("--compare", action="store_true", help="also time the other paths")
    parser.add_argument("--precision", default=None, help="float32 (default) or bfloat16")
    args = parser.parse_args(argv)
    sizes = (
        {int(a): int(b) for a, b in (f.split(":") for f in args.frames)}
        if args.frames
        else DEFAULT_FRAMES
    )

    import tensorflow as tf

    from defcon.live import Counter
    from defcon.networks import FCN
    from defcon.resources import DEFAULT_PRETRAINED

    print("command: python benchmarks/" + " ".join([Path(__file__).name, *sys.argv[1:]]))
    print(f"machine: {machine_facts()}, TensorFlow {tf.__version__}")
    print(f"load average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    model = FCN.pretrained()
    print(f"model: {DEFAULT_PRETRAINED} (FCN.pretrained()), {args.precision or 'float32'}")
    print(f"{'frame':>11} {'path':<28} {'frames':>6} {'median ms':>10} {'p99 ms':>8} {'cpu':>5}")
    for side, n in sizes.items():
        pool = frame_pool(side)
        counter = Counter(model, precision=args.precision, frame_shape=(side, side))
        times, share = latencies(calls(model, counter, args.compare), pool, n)
        for name, t in times.items():
            median, p99 = np.median(t) * 1e3, np.percentile(t, 99) * 1e3
            print(
                f"{side:>5} x {side:<5} {name:<28} {n:>6} {median:>10.1f} {p99:>8.1f} {share:>5.2f}"
            )


if __name__ == "__main__":
    main()
