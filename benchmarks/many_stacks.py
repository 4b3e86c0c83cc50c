"""Many stacks: serial count_tiff against defcon.distributed.count_stacks on a LocalCluster.

Writes ``--stacks`` simulated stacks of ``--frames`` 64 x 64 frames, then, in
each of ``--repeats`` rounds, counts them all with every variant, in turn:

- ``serial``: one ``count_tiff`` after another in this process, the model
  loaded once (what a Python loop over ``defcon predict STACK`` does at best);
- ``dask Nw``: ``count_stacks(..., n_workers=N)``, end to end: starting the
  local cluster, importing TensorFlow and loading the model in every worker,
  counting, closing the cluster (what ``defcon predict FOLDER`` costs);
- ``warm Nw``: ``count_stacks(..., scheduler=ADDRESS)`` on a local cluster of N
  workers started before the rounds (one TensorFlow thread per core, as
  count_stacks sets them) whose workers have loaded the model in a first,
  untimed run: the steady state of a long-lived cluster.

The table gives medians over rounds: wall seconds, frames/s, and the speed-up
over serial. Every variant's counts CSVs are checked to be byte-identical.
The model is the shipped one (``FCN.pretrained()``), envelope check on.

Usage::

    python benchmarks/many_stacks.py                       # 8 stacks x 500 frames, 3 rounds
    python benchmarks/many_stacks.py --stacks 4 --frames 100 --repeats 1 --workers 1 2
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import machine_facts  # noqa: E402 - after the TensorFlow log setting


def write_stacks(folder, n_stacks, n_frames):
    import tifffile

    from defcon.simulate import simulate_stack

    paths = []
    for k in range(n_stacks):
        stack, _ = simulate_stack(n_frames, 64, 64, seed=k, density_sweep=(0.1, 1.5))
        paths.append(folder / f"stack{k:02d}.tif")
        tifffile.imwrite(paths[-1], stack)
    return paths


def count_serial(model, stacks):
    from defcon.distributed import counts_path
    from defcon.predict import count_tiff

    for stack in stacks:
        count_tiff(model, stack, counts=counts_path(stack))


def count_dask(model_file, stacks, n_workers=None, scheduler=None):
    from defcon.distributed import count_stacks

    results = count_stacks(
        model_file, stacks, n_workers=n_workers, scheduler=scheduler, summary=None
    )
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise RuntimeError(failed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--frames", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from defcon.networks import FCN
    from defcon.resources import DEFAULT_PRETRAINED, shipped_model_file

    print(machine_facts())
    import dask
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, dask {dask.__version__}")
    model_file = shipped_model_file(DEFAULT_PRETRAINED)
    model = FCN.from_file(model_file)
    import contextlib
    import logging

    from distributed import Client, LocalCluster

    from defcon.distributed import _limit_tensorflow_threads

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as clusters:
        stacks = write_stacks(Path(tmp), args.stacks, args.frames)
        variants = {"serial": lambda: count_serial(model, stacks)}
        for n in args.workers:
            variants[f"dask {n}w"] = lambda n=n: count_dask(model_file, stacks, n)
        for n in args.workers:
            cluster = clusters.enter_context(
                LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,
                    dashboard_address="127.0.0.1:0",
                    silence_logs=logging.ERROR,
                )
            )
            with Client(cluster) as client:
                client.run(_limit_tensorflow_threads, max(1, (os.cpu_count() or 1) // n))
            count_dask(model_file, stacks, scheduler=cluster.scheduler_address)  # warm-up
            variants[f"warm {n}w"] = lambda a=cluster.scheduler_address: count_dask(
                model_file, stacks, scheduler=a
            )
        times = {name: [] for name in variants}
        reference = None
        for _ in range(args.repeats):
            for name, run in variants.items():
                for stack in stacks:  # every variant writes the same CSVs afresh
                    stack.with_name(stack.stem + "_counts.csv").unlink(missing_ok=True)
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
                csvs = [s.with_name(s.stem + "_counts.csv").read_bytes() for s in stacks]
                reference = reference or csvs
                assert csvs == reference, f"{name}: counts differ from serial"
        frames = args.stacks * args.frames
        print(
            f"{args.stacks} stacks x {args.frames} frames of 64 x 64, {model_file.name}, "
            f"median of {args.repeats} (runs: variants in turn); counts CSVs byte-identical"
        )
        print(f"{'variant':<10} {'wall s':>8} {'frames/s':>9} {'speed-up':>9}   all runs (s)")
        base = statistics.median(times["serial"])
        for name, runs in times.items():
            wall = statistics.median(runs)
            print(
                f"{name:<10} {wall:8.1f} {frames / wall:9.0f} {base / wall:8.2f}x   "
                + " ".join(f"{t:.1f}" for t in runs)
            )


if __name__ == "__main__":
    main()
