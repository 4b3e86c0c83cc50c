r"""Count emitters live during a Micro-Manager acquisition driven by pymmcore-plus.

Every frame the camera delivers (``core.mda.events.frameReady``) goes to a
:class:`defcon.live.LiveCounter`, which counts it in a background thread
without ever blocking the acquisition (frames arriving while one is being
counted replace each other; the count of dropped frames is printed at the
end). The main thread prints the count and maximum local count of each frame
counted and a proportional rule's proposed 405 nm activation power that would
keep the maximum local count near ``--target``. The power is only printed,
unless ``--laser DEVICE PROPERTY`` names the Micro-Manager property to set.

Run it on your own machine (not run in CI)::

    pip install -e ".[live]"      # defcon with pymmcore-plus
    mmcore install                # Micro-Manager's device adapters, with the demo configuration
    python example/live_micromanager.py --frames 200
    python example/live_micromanager.py --config my_scope.cfg --frames 5000 \
        --target 2.0 --laser "405 laser" "Power (mW)" --max-power 5 --plot counts.png

Without ``--config`` the demo configuration (``MMConfig_demo.cfg``) is loaded:
its DemoCamera draws test patterns, not single molecules, so the counts only
show that the wiring works. With a real microscope, check the proposed powers
first (without ``--laser``) and choose ``--gain`` and ``--max-power`` with care.
"""

import argparse
import queue


def parse_args(argv=None):
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="Micro-Manager .cfg file (default: the demo one)")
    parser.add_argument("--model", default="pretrained", help="defcon model file or name")
    parser.add_argument("--frames", type=int, default=200, help="frames to acquire")
    parser.add_argument("--exposure", type=float, default=20.0, help="exposure, ms")
    parser.add_argument("--box", type=int, default=7, help="box of the max local count, px")
    parser.add_argument("--target", type=float, default=2.0, help="max local count to keep")
    parser.add_argument("--gain", type=float, default=0.1, help="power step per unit of error")
    parser.add_argument("--max-power", type=float, default=1.0, help="highest power proposed")
    parser.add_argument(
        "--laser", nargs=2, metavar=("DEVICE", "PROPERTY"), help="set the power on this property"
    )
    parser.add_argument("--plot", help="save counts per frame to this PNG at the end")
    return parser.parse_args(argv)


def propose_power(power, max_local_count, target, gain, max_power):
    """Proportional rule: raise the 405 nm power when too few emitters are on, lower it else."""
    return min(max(power + gain * (target - max_local_count), 0.0), max_power)


def main(argv=None):
    """Acquire ``--frames`` frames, counting each live and proposing (or setting) the power."""
    args = parse_args(argv)
    from pymmcore_plus import CMMCorePlus  # optional: pip install "defcon[live]"
    from useq import MDASequence

    from defcon.live import Counter

    core = CMMCorePlus()
    if args.config:
        core.loadSystemConfiguration(args.config)
    else:
        core.loadSystemConfiguration()  # MMConfig_demo.cfg of the installed Micro-Manager
    core.setExposure(args.exposure)
    shape = (core.getImageHeight(), core.getImageWidth())
    counter = Counter(args.model, box_size=args.box, frame_shape=shape)  # compiled and warm

    power = float(core.getProperty(*args.laser)) if args.laser else 0.0
    results, done = [], queue.SimpleQueue()

    def report(result, power):
        power = propose_power(power, result.max_local_count, args.target, args.gain, args.max_power)
        if args.laser:
            core.setProperty(*args.laser, power)
        print(
            f"frame {result.index:5d}  count {result.count:7.2f}  max local "
            f"{result.max_local_count:5.2f}  latency {result.latency_s * 1e3:6.1f} ms  "
            f"405 nm power {power:.3f}" + ("" if args.laser else " (proposed)")
        )
        results.append(result)
        return power

    with counter.start(on_result=done.put) as live:  # on_result runs in the counting thread

        def on_frame(image, *_):  # runs in the acquisition thread: hand over, return at once
            live.submit(image)

        core.mda.events.frameReady.connect(on_frame)
        acquisition = core.run_mda(MDASequence(time_plan={"interval": 0, "loops": args.frames}))
        while acquisition.is_alive():  # control from this thread, one result at a time
            try:
                power = report(done.get(timeout=0.1), power)
            except queue.Empty:
                pass
        core.mda.events.frameReady.disconnect(on_frame)
    while not done.empty():  # the last frame, counted when the counter closed
        power = report(done.get(), power)
    print(f"{live.submitted} frames: {live.counted} counted, {live.dropped} dropped")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        index = [r.index for r in results]
        ax.plot(index, [r.count for r in results], label="count")
        ax.plot(index, [r.max_local_count for r in results], label=f"max {args.box}x{args.box}")
        ax.axhline(args.target, ls="--", c="grey", label="target")
        ax.set(xlabel="frame", ylabel="emitters")
        ax.legend()
        fig.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
