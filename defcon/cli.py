"""The ``defcon`` command: one subcommand per step of the workflow.

Run ``defcon --help`` or ``defcon SUBCOMMAND --help``. Errors print one line
and exit non-zero; ``--debug`` shows the traceback.
"""

import argparse
import logging
import os
import signal
import sys

# Before TensorFlow is imported anywhere: its C++ start-up chatter is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from . import __version__  # noqa: E402
from .errors import DefconError  # noqa: E402

log = logging.getLogger("defcon")
#: Subcommands that load Keras and its backend (TensorFlow by default).
KERAS_COMMANDS = ("train", "predict", "export")

EPILOG = """workflow:
  defcon simulate --out sim/                      simulated stack + frame logger
  defcon build training.h5 sim/stack.tif sim/frame_logger.csv --name sim
  defcon compact training.h5 compact.h5 --shuffle --augment
  defcon train configs/quickstart.ini             two-stage training
  defcon predict model.keras stack.tif --counts counts.csv
  defcon export model.keras --fiji Fiji.app/plugins
  defcon clean .                                  remove what interrupted runs left
  defcon info --system                            versions, Keras backend, devices

Keras backend: TensorFlow by default; KERAS_BACKEND=jax (pip install "defcon[jax]")
trains and predicts on JAX; exports need TensorFlow.
"""


MODEL_HELP = (
    "model file: .keras, the original DEFCoN .h5, a Keras weights file or a "
    "bioimage.io package (.zip); or 'pretrained' for the model defcon ships"
)


def _add_device_option(p):
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default=None,
        help="run the network on the CPU or the first GPU of the Keras backend "
        "(default: the backend's choice, a GPU when it sees one); gpu fails when none is found",
    )


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _index(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a 0-based index (0 or more), not {value}")
    return value


def _add_stack_options(p):
    g = p.add_argument_group(
        "stack layout",
        "Which planes of the TIFF are frames (0-based indices). A file of "
        "several series is read whole, series after series; a multi-file OME-TIFF "
        "(Micro-Manager NAME_MMStack_Pos0.ome.tif, ..._1.ome.tif) is read across its files "
        "from the first one. A hyperstack with more than one axis of several planes besides "
        "Y and X (e.g. ImageJ TZCYX, TCYX, ZCYX) needs --channel and/or --z so that one axis "
        "(usually time) is left as frames.",
    )
    g.add_argument(
        "--series",
        type=_index,
        metavar="N",
        help="read only series N of a file holding several (default: all of them, "
        "when their frames have one shape and type)",
    )
    g.add_argument(
        "--channel", type=_index, metavar="N", help="keep channel N of the C axis of a hyperstack"
    )
    g.add_argument(
        "--z", type=_index, metavar="N", help="keep plane N of the Z axis of a hyperstack"
    )


def _stack_options(args):
    """The TiffStack keywords of ``--series``, ``--channel`` and ``--z``."""
    return {
        key: getattr(args, key)
        for key in ("series", "channel", "z")
        if getattr(args, key) is not None
    }


def _add_simulate(sub):
    p = sub.add_parser(
        "simulate",
        help="simulate an SMLM stack and its frame logger",
        description="Simulate a PALM/STORM acquisition (SASS-like): writes "
        "OUT/stack.tif (uint16) and OUT/frame_logger.csv (frame,id,x,y,z,"
        "brightness; frames 1-based, x/y in pixels).",
    )
    p.add_argument("--frames", type=_positive_int, default=1000, help="number of frames (1000)")
    p.add_argument("--height", type=_positive_int, default=64, help="frame height in pixels (64)")
    p.add_argument("--width", type=_positive_int, default=64, help="frame width in pixels (64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--density-sweep",
        nargs="*",
        type=float,
        metavar=("LOW", "HIGH"),
        help="ramp the density of emitting fluorophores (per um^2) from LOW to HIGH "
        "over the stack, so it spans sparse to crowded frames; without values: "
        "0 to 2 per um^2 (0 to ~80 emitters in 64 x 64 at 100 nm pixels)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any simulation parameter, e.g. --set photon_rate=1500 --set "
        "em_gain=100 --set camera=scmos --set layout=filaments --set "
        "psf_sigma_px=1.6 (see defcon.simulate.SimulationParameters); applied "
        "after --randomize/--conditions",
    )
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--randomize",
        action="store_true",
        help="draw the imaging conditions (PSF width, photons, background, "
        "camera, pixel size, layout, density sweep) from the ranges defcon's "
        "model is trained on (defcon.conditions.TRAINING_RANGES), from --seed",
    )
    source.add_argument(
        "--conditions",
        metavar="JSON",
        help="imaging conditions from a file (as written to OUT/conditions.json)",
    )
    source.add_argument(
        "--like",
        metavar="CALIB_JSON",
        help="conditions like a calibrated microscope (written by defcon calibrate): "
        "its PSF width, photons and background varied a little, from --seed",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder; with --randomize, --like or "
        "--conditions it also gets conditions.json, whose brightness_threshold "
        "is the one to build with",
    )
    p.add_argument(
        "--stacks",
        type=_positive_int,
        default=1,
        help="simulate this many stacks (OUT/stack-001/, ...), each with conditions drawn "
        "from --seed + k (--like, --randomize) and its own seed (1)",
    )
    p.add_argument(
        "--training-set",
        metavar="FILE",
        help="also build the stacks into a shuffled compact set FILE, ready for defcon train "
        "(each stack with the brightness threshold of its conditions; OUT/training.h5 "
        "keeps them one dataset per stack); e.g. defcon simulate --like calib.json "
        "--stacks 16 --frames 250 --out finetune/ --training-set finetune/compact.h5",
    )
    p.set_defaults(run=_run_simulate)


def _run_simulate(args):
    from pathlib import Path

    from . import conditions
    from .simulate import simulate

    draw = _conditions_source(args)
    overrides = _parse_assignments(args.set)
    if args.density_sweep is not None:
        if len(args.density_sweep) not in (0, 2):
            raise SystemExit("defcon simulate: error: --density-sweep takes no value or LOW HIGH")
        overrides["density_sweep"] = tuple(args.density_sweep) or True
    if args.stacks > 1 or args.training_set:
        _run_simulate_many(args, draw, overrides)
        return
    drawn = draw(args.seed) if draw else None
    params = {**(conditions.simulation_parameters(drawn) if drawn else {}), **overrides}
    summary = simulate(
        args.out,
        args.frames,
        args.height,
        args.width,
        seed=args.seed,
        progress=not args.quiet,
        **params,
    )
    print(
        f"wrote {summary['stack']} ({summary['n_frames']} frames of {summary['height']} x "
        f"{summary['width']}) and {summary['frame_logger']}: {summary['n_emitters']} emitters, "
        f"{summary['emitters_per_frame_mean']:.1f} per frame "
        f"({summary['emitters_per_frame_min']} to {summary['emitters_per_frame_max']})"
    )
    if drawn is not None:
        drawn = conditions.with_overrides(drawn, overrides)
        conditions.write_conditions(drawn, Path(args.out) / "conditions.json")
        print(
            f"conditions: {Path(args.out) / 'conditions.json'} (camera {drawn.get('camera')}, "
            f"PSF sigma {summary['sigma_px']:.2f} px, layout {drawn.get('layout')}); build "
            f"with --brightness-threshold {drawn['brightness_threshold']:.1f}"
        )


def _conditions_source(args):
    """``draw(seed) -> conditions`` from --randomize, --conditions or --like; else None."""
    from . import conditions

    if args.randomize:
        return lambda seed: conditions.sample_conditions(seed, n_frames=args.frames)
    if args.conditions:
        fixed = conditions.read_conditions(args.conditions)
        return lambda seed: fixed
    if args.like:
        from .calibrate import like_conditions, read_calibration

        calibration = read_calibration(args.like)
        return lambda seed: like_conditions(calibration, seed)
    return None


def _run_simulate_many(args, draw, overrides):
    from .simulated_sets import simulate_training_set, stack_folder

    if draw is None:
        raise SystemExit(
            "defcon simulate: error: --stacks and --training-set need --like, --randomize or "
            "--conditions (each stack's brightness threshold comes from its conditions)"
        )
    path = simulate_training_set(
        draw,
        args.out,
        args.training_set,
        args.stacks,
        args.frames,
        args.height,
        args.width,
        seed=args.seed,
        overrides=overrides,
        progress=not args.quiet,
    )
    print(
        f"wrote {args.stacks} stacks of {args.frames} frames of {args.height} x {args.width} "
        f"({stack_folder(args.out, 0)} to {stack_folder(args.out, args.stacks - 1).name}, "
        "each with conditions.json)"
    )
    if path is not None:
        print(f"wrote {path}: a shuffled compact set of all of them, ready for defcon train")
        _print_info(path)


def _parse_assignments(assignments):
    """``['a=1', 'b=x']`` -> ``{'a': 1, 'b': 'x'}`` (numbers, None and booleans parsed)."""
    import ast

    params = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"defcon: error: --set expects NAME=VALUE, not {text!r}")
        try:
            params[name.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            params[name.strip()] = value.strip()
    return params


def _add_build(sub):
    p = sub.add_parser(
        "build",
        help="add a stack and its ground truth to a TrainingSet",
        description="Add a TIFF stack and its ground truth (a SASS frame logger, or a "
        "ThunderSTORM, Picasso or DECODE localization table) to a TrainingSet "
        "(created if missing) as input/NAME, target/NAME and seg_map/NAME.",
    )
    p.add_argument("training_set", help="TrainingSet HDF5 file (created if missing)")
    p.add_argument("stack", help="TIFF stack (frames, H, W)")
    p.add_argument(
        "ground_truth",
        help="frame-logger CSV (frame,id,x,y,z,brightness), ThunderSTORM CSV, Picasso "
        "*_locs.hdf5 or DECODE emitter table (CSV or HDF5)",
    )
    p.add_argument(
        "--format",
        dest="ground_truth_format",
        choices=("sass", "thunderstorm", "picasso", "decode"),
        help="format of the ground truth (default: detected from its header or HDF5 layout)",
    )
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="NM",
        help="camera pixel size in nm, for positions in nm (ThunderSTORM x [nm]; DECODE "
        "without px_size)",
    )
    p.add_argument("--name", help="dataset name (default: the stack's folder or file name)")
    p.add_argument(
        "--sigma", type=float, default=1.0, help="std of each emitter's Gaussian in pixels (1.0)"
    )
    p.add_argument(
        "--brightness-threshold",
        type=float,
        default=250,
        help="emitters at or below this brightness are not counted (250)",
    )
    p.add_argument(
        "--seg-threshold",
        type=float,
        default=0.03,
        help="density above which a pixel is foreground (0.03)",
    )
    p.add_argument(
        "--kernel",
        choices=("integrated", "sampled"),
        default="integrated",
        help="Gaussian integrated over pixels, or sampled at pixel centres as in "
        "the original DEFCoN (integrated)",
    )
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="accept a ground truth without any emitter above the threshold "
        "(background-only training data); refused by default, as it usually means "
        "a wrong file, threshold or unit",
    )
    _add_stack_options(p)
    p.set_defaults(run=_run_build)


def _run_build(args):
    from pathlib import Path

    from .datasets import TrainingSet

    name = args.name or _default_name(Path(args.stack))
    with TrainingSet(args.training_set) as ts:
        ts.add_dataset(
            name,
            args.stack,
            args.ground_truth,
            brightness_threshold=args.brightness_threshold,
            sigma=args.sigma,
            seg_threshold=args.seg_threshold,
            kernel=args.kernel,
            progress=not args.quiet,
            allow_empty=args.allow_empty,
            stack_options=_stack_options(args),
            ground_truth_format=args.ground_truth_format,
            pixel_size_nm=args.pixel_size,
        )
        ts.summary()


def _default_name(stack_path):
    return stack_path.parent.name if stack_path.stem == "stack" else stack_path.stem


def _add_compact(sub):
    p = sub.add_parser(
        "compact",
        help="merge a TrainingSet into one shuffled, augmented set",
        description="Merge every dataset of a TrainingSet into input/input, "
        "target/target and seg_map/seg_map, streaming.",
    )
    p.add_argument("training_set", help="TrainingSet HDF5 file")
    p.add_argument("output", help="compact HDF5 file to write")
    p.add_argument("--shuffle", action="store_true", help="shuffle frames (aligned in all groups)")
    p.add_argument(
        "--augment",
        action="store_true",
        help="random brightness per input frame, 10**U(-0.5, 1), clipped to [0, 1]",
    )
    p.add_argument("--seed", type=int, default=None, help="seed of shuffle and augmentation")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files that defcon did not write (outputs "
        "never replace an input)",
    )
    p.set_defaults(run=_run_compact)


def _run_compact(args):
    from .datasets import compact_set, is_compact_set
    from .files import check_output

    check_output(
        args.output,
        [args.training_set],
        same_kind=is_compact_set,
        overwrite=args.overwrite,
        what="compact set",
    )

    path = compact_set(
        args.training_set,
        args.output,
        shuffle=args.shuffle,
        augment=args.augment,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"wrote {path}")
    _print_info(path)


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train a DEFCoN network from an .ini file",
        description="Two-stage training (segmentation, then density) from a "
        "DEFCoN .ini file; same as `python -m defcon.train CONFIG`.",
    )
    p.add_argument("config", help="training configuration (.ini); see configs/default.ini")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model already in OutputDir (refused by default)",
    )
    _add_device_option(p)
    p.set_defaults(run=_run_train)


def _run_train(args):
    from .train import train

    result = train(args.config, overwrite=args.overwrite)
    print(f"model: {result['model']}")


def _add_predict(sub):
    p = sub.add_parser(
        "predict",
        help="count emitters in TIFF stacks",
        description="Predict density maps for every frame of a TIFF stack "
        "(8/16-bit or float, any frame size), streaming it, and write the count "
        "and the maximum local count of every frame to a CSV "
        "(frame,count,max_local_count,flag; frames 1-based) and a picture of them "
        "beside it (the CSV's name with .png: both values per frame, a rolling mean, "
        "the flagged frames marked; --no-plot skips it). When the model "
        "records its training envelope (the shipped models do), the PSF width "
        "of every chunk and the density of every frame are checked against it: "
        "frames outside get a flag (psf_wide, psf_narrow, too_dense) and a "
        "warning, since their counts may be biased. Every frame of the stack is "
        "counted or the command fails: see --allow-truncated and --nan-frames "
        "for damaged stacks. Several stacks, or a folder (its *.tif and *.tiff files, "
        "sorted, not its subfolders unless --recursive), are counted in parallel with "
        "Dask (see 'many stacks'): each stack gets STACK_counts.csv (and .png) beside it, and a "
        "summary CSV lists every stack; stacks that fail are reported and the others "
        "counted.",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument(
        "stacks",
        nargs="+",
        metavar="STACK",
        help="TIFF stack to count; or several, or folders of stacks",
    )
    p.add_argument(
        "--out", help="also write the density maps to this .tif or .h5 file (one stack only)"
    )
    p.add_argument(
        "--counts", help="counts CSV (one stack only; default: STACK_counts.csv beside the stack)"
    )
    p.add_argument(
        "--no-plot",
        action="store_true",
        help="do not write the counts plot (the counts CSV's name with .png)",
    )
    p.add_argument(
        "--overlay",
        type=_positive_int,
        metavar="N",
        help="also draw frame N (1-based, one stack only) to STACK_overlay_N.png beside "
        "the counts CSV: the raw frame, its density map, and the densest box (or the "
        "--ground-truth positions) on the raw frame",
    )
    p.add_argument(
        "--ground-truth",
        metavar="FILE",
        help="with --overlay: ring the true positions of that frame from this table "
        "(frame-logger CSV, ThunderSTORM, Picasso or DECODE; every emitter, any brightness)",
    )
    p.add_argument(
        "--box-size",
        "--box",
        type=_positive_int,
        default=7,
        help="side of the box for the maximum local count, pixels (7)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="frames per batch (default: about half a megapixel per batch)",
    )
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16"),
        default="float32",
        help="bfloat16 is ~2.5x faster on CPUs with AMX/AVX512-BF16; counts move "
        "by ~0.25 %% (float32)",
    )
    p.add_argument(
        "--no-envelope-check",
        action="store_true",
        help="skip the training-envelope check (no psf_* or too_dense flags)",
    )
    p.add_argument(
        "--allow-truncated",
        action="store_true",
        help="count the intact frames of a truncated or damaged stack (an error by "
        "default); the summary warns and the last counted frame gets the flag "
        "'truncated' in the CSV",
    )
    p.add_argument(
        "--nan-frames",
        choices=("error", "flag"),
        default="error",
        help="frames holding NaN or infinite pixels: 'error' stops, naming them "
        "(default); 'flag' leaves their count and max_local_count empty with the "
        "flag 'nan_pixels' (and NaN density maps) and counts the other frames",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing output files that defcon did not write (outputs "
        "never replace an input)",
    )
    _add_device_option(p)
    _add_stack_options(p)
    _add_many_stacks_options(p)
    p.set_defaults(run=_run_predict)


def _add_many_stacks_options(p):
    g = p.add_argument_group(
        "many stacks",
        "Several stacks, a folder, --scheduler, --workers or --summary count every "
        'stack as one Dask task (pip install "defcon[dask]"; without Dask, one after '
        "another in this process). Each worker process loads the model once. A stack "
        "that fails is listed on stderr and in the summary, the others are counted, and "
        "the command exits with status 1.",
    )
    g.add_argument(
        "--out-dir",
        metavar="DIR",
        help="also write the density maps of every stack to DIR/<stem>_density.tif",
    )
    g.add_argument(
        "--summary",
        metavar="FILE",
        help="summary CSV of all stacks: path, status, frames, total_count, "
        "mean_count, max_local_count, flags, seconds, error (default: "
        "defcon_summary.csv in the current folder)",
    )
    g.add_argument(
        "--recursive", action="store_true", help="also take the TIFF files of subfolders"
    )
    g.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler (tcp://host:8786) whose workers see "
        "the stacks and the model under the same paths (default: a local cluster)",
    )
    g.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="worker processes of the local cluster (default: one per two cores, at "
        "most one per stack)",
    )


def _count_options(args):
    """The count_tiff keywords of ``defcon predict``'s options (outputs aside)."""
    return dict(
        box_size=args.box_size,
        batch_size=args.batch_size,
        precision=args.precision,
        check_envelope=not args.no_envelope_check,
        stack_options={
            **_stack_options(args),
            "allow_truncated": args.allow_truncated,
            "nonfinite": args.nan_frames,
        },
    )


def _run_predict(args):
    from pathlib import Path

    from .distributed import counts_path, density_path
    from .errors import ParameterError
    from .predict import count_tiff

    if _predicts_many(args):
        return _run_predict_many(args)
    if args.out and args.out_dir:
        raise ParameterError("--out and --out-dir both name the density maps: give one")
    if args.ground_truth and args.overlay is None:
        raise ParameterError("--ground-truth marks the positions of the --overlay frame: give both")
    stack_path = Path(args.stacks[0])
    counts = Path(args.counts) if args.counts else counts_path(stack_path)
    density = args.out or (args.out_dir and density_path(stack_path, args.out_dir))
    overlay = _checked_overlay(args, stack_path, counts, density)  # before the long part
    result = count_tiff(
        args.model,
        stack_path,
        counts=counts,
        density_output=density,
        progress=not args.quiet,
        overwrite=args.overwrite,
        plot=not args.no_plot,
        **_count_options(args),
    )
    if overlay is not None:
        from .plots import plot_overlay

        plot_overlay(
            args.model,
            stack_path,
            args.overlay,
            overlay,
            ground_truth=args.ground_truth,
            box_size=args.box_size,
            stack_options=_count_options(args)["stack_options"],
            precision=args.precision,
        )
    _print_counts(stack_path, result, args, overlay)


def _checked_overlay(args, stack_path, counts, density):
    """The PNG of ``--overlay N``, its frame, path and ground truth checked; None without it."""
    if args.overlay is None:
        return None
    from .plots import check_png_output, counts_plot_path, overlay_index, overlay_path

    overlay_index(stack_path, args.overlay, _count_options(args)["stack_options"])
    if args.ground_truth:
        from .localizations import Localizations

        Localizations(args.ground_truth)  # exists and has a known layout
    path = overlay_path(counts, stack_path, args.overlay)
    plot = None if args.no_plot else counts_plot_path(counts)
    check_png_output(
        path,
        [stack_path, args.model, args.ground_truth],
        [counts, density, plot],
        overwrite=args.overwrite,
        what="overlay",
    )
    return path


def _predicts_many(args):
    """Whether ``defcon predict`` counts many stacks (several, a folder, or on Dask)."""
    from pathlib import Path

    many = args.scheduler or args.workers or args.summary
    return len(args.stacks) > 1 or many or Path(args.stacks[0]).is_dir()


def _run_predict_many(args):
    """``defcon predict`` of several stacks: defcon.distributed.count_stacks, then a report."""
    from .distributed import DEFAULT_SUMMARY, count_stacks
    from .errors import ParameterError, StacksFailedError

    if args.out:
        raise ParameterError(
            "--out names one density file; with several stacks use --out-dir DIR "
            "(writes DIR/<stem>_density.tif)"
        )
    if args.counts:
        raise ParameterError(
            "--counts names one file; with several stacks each stack's counts go to "
            "STACK_counts.csv beside it"
        )
    if args.overlay is not None or args.ground_truth:
        raise ParameterError(
            "--overlay and --ground-truth draw one frame of one stack: count that stack alone"
        )
    summary = args.summary or DEFAULT_SUMMARY
    results = count_stacks(
        args.model,
        args.stacks,
        scheduler=args.scheduler,
        n_workers=args.workers,
        out_dir=args.out_dir,
        summary=summary,
        recursive=args.recursive,
        progress=not args.quiet,
        overwrite=args.overwrite,
        device=args.device,
        plot=not args.no_plot,
        **_count_options(args),
    )
    for result in results:
        path, status, frames, total, mean, _, flags, seconds, _ = result.row()
        if status == "ok":
            counted = f"{total} emitters, {mean} per frame" if total else "none counted"
            print(
                f"{path}: {frames} frames, {counted}"
                + (f", flags {flags}" if flags else "")
                + f" ({seconds} s)"
            )
    failed = [r for r in results if not r.ok]
    for result in failed:
        where = "" if result.error.startswith(str(result.path)) else f"{result.path}: "
        print(f"defcon predict: error: {where}{result.error}", file=sys.stderr)
    print(f"summary: {summary}")
    if failed:
        raise StacksFailedError(
            f"{len(failed)} of {len(results)} stacks failed (listed above and in {summary})"
        )


def _print_counts(stack_path, result, args, overlay=None):
    """The summary of ``defcon predict``: totals, then one line per warning, then the files."""
    counts = result.counts[result.counted]
    box = result.box_size
    print(
        f"{stack_path}: {len(result.frames)} frames{_layout(args)}, "
        + (
            f"{counts.sum():.1f} emitters in all, {counts.mean():.2f} per frame "
            f"({counts.min():.1f} to {counts.max():.1f}); densest {box}x{box} box: "
            f"{result.max_local_counts[result.counted].max():.2f}"
            if len(counts)
            else "none counted"
        )
    )
    if len(counts) < len(result.counts):
        print(
            f"warning: {len(result.counts) - len(counts)} frame(s) hold NaN or infinite pixels: "
            "not counted (flag nan_pixels, empty count)"
        )
    if result.truncated:
        declared, read = result.truncated
        print(
            f"warning: truncated or damaged file: {read} intact frames counted"
            + (f" of the {declared} it declares" if declared else "")
            + f" (flag truncated on frame {read})"
        )
    if result.envelope_summary:
        print(f"warning: {result.envelope_summary}")
    elif result.envelope_summary is None:
        print(
            "training envelope not checked"
            if args.no_envelope_check
            else "no training envelope checked (the model records none)"
        )
    print(
        f"counts: {result.counts_path}"
        + (f"; plot: {result.plot_path}" if result.plot_path else "")
        + (f"; density maps: {result.density_path}" if result.density_path else "")
        + (f"; overlay: {overlay}" if overlay else "")
    )


def _layout(args):
    """' (series 1, channel 0, z 2)' for the chosen planes, or ''."""
    chosen = ", ".join(f"{key} {value}" for key, value in _stack_options(args).items())
    return f" ({chosen})" if chosen else ""


def _add_export(sub):
    p = sub.add_parser(
        "export",
        help="export a model for Fiji and TensorFlow runtimes",
        description="Export a density model. --fiji DIR writes DIR/DEFCoN/ "
        "with tf_density_count/ and tf_max_count/ (TensorFlow 1.x SavedModels "
        "that the DEFCoN-ImageJ plugin and defcon's Fiji plugin load) and a "
        "README.txt; copy DEFCoN/ into Fiji.app/plugins/ (or give "
        "Fiji.app/plugins as DIR).",
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--fiji", metavar="DIR", help="write DIR/DEFCoN/ for Fiji")
    p.add_argument(
        "--tf1",
        metavar="DIR",
        help="write one TF1-compatible SavedModel "
        "(input_tensor -> output_tensor), as FCN.save_tf_model",
    )
    p.add_argument(
        "--tf2",
        metavar="DIR",
        help="write a TF2 SavedModel with a "
        "serving_default signature (TF Serving, tf.saved_model.load)",
    )
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="write ONNX (opset 17) for onnxruntime, deepImageJ and others",
    )
    p.add_argument(
        "--bioimageio",
        metavar="ZIP",
        help="write a bioimage.io model package "
        "(ONNX + TF SavedModel weights, test tensors, docs, SHA-256 of every file)",
    )
    p.add_argument(
        "--czann",
        metavar="FILE",
        help="write a ZEISS ZEN / arivis regression model (.czann, via czmodel): the "
        "density map, tiles of 256 px with a border of the receptive margin",
    )
    p.add_argument(
        "--training-dir",
        metavar="DIR",
        help="with --bioimageio: the training "
        "OutputDir, whose config, history.tsv and curves.png are attached",
    )
    p.add_argument(
        "--training-set",
        metavar="H5",
        help="with --bioimageio: the training set, whose sources and checksums are recorded",
    )
    p.add_argument(
        "--author",
        action="append",
        default=None,
        metavar="NAME",
        help="with --bioimageio: an author (repeat for several)",
    )
    p.add_argument(
        "--box-size",
        "--box",
        type=_positive_int,
        default=7,
        help="box side of the max-count model, pixels (7)",
    )
    p.add_argument(
        "--division",
        type=float,
        default=None,
        help="divide the output by this number, as DEFCoN's export did",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing outputs that are not defcon exports (outputs never "
        "replace an input)",
    )
    p.set_defaults(run=_run_export)


def _run_export(args):
    from . import export
    from .backends import require_tensorflow
    from .networks import FCN

    if not (args.fiji or args.tf1 or args.tf2 or args.onnx or args.bioimageio or args.czann):
        raise SystemExit(
            "defcon export: error: say what to write: --fiji, --tf1, --tf2, "
            "--onnx, --bioimageio and/or --czann"
        )
    require_tensorflow("defcon export")
    _check_export_outputs(args)
    if args.czann:
        from .czann import is_czann
        from .files import check_output

        check_output(
            args.czann,
            [args.model, args.training_set],
            same_kind=is_czann,
            overwrite=args.overwrite,
            what="--czann export",
        )
    model = FCN.from_file(args.model)
    if args.czann:
        from .czann import export_czann

        path = export_czann(model, args.czann, overwrite=args.overwrite)
        print(f"wrote {path} (check it with: defcon info {path})")
    if args.onnx or args.bioimageio:
        from . import package

        if args.onnx:
            print(f"wrote {package.export_onnx(model, args.onnx)}")
        if args.bioimageio:
            path = package.export_bioimageio(
                model,
                args.bioimageio,
                authors=args.author,
                training_dir=args.training_dir,
                training_set=args.training_set,
            )
            print(f"wrote {path} (check it with: defcon info {path})")
    if args.fiji:
        folder = export.export_fiji(
            model, args.fiji, box_size=args.box_size, division=args.division
        )
        print(f"wrote {folder}: copy it into Fiji.app/plugins/ (see its README.txt)")
    if args.tf1:
        print(f"wrote {export.save_tf1_model(model, args.tf1, division=args.division)}")
    if args.tf2:
        print(f"wrote {export.save_tf2_model(model, args.tf2)}")


def _check_export_outputs(args):
    from pathlib import Path

    from .files import check_output
    from .package_reader import is_package

    def saved_model(path):
        return (Path(path) / "saved_model.pb").exists()

    def onnx_from_defcon(path):
        with open(path, "rb") as f:
            return b"tf2onnx" in f.read(64)

    inputs = [args.model, args.training_set]
    kinds = {
        "onnx": onnx_from_defcon,
        "bioimageio": is_package,
        "tf1": saved_model,
        "tf2": saved_model,
    }
    for option, same_kind in kinds.items():
        target = getattr(args, option)
        if target:
            check_output(
                target,
                inputs,
                same_kind=same_kind,
                overwrite=args.overwrite,
                what=f"--{option} export",
            )
    if args.fiji:
        check_output(
            Path(args.fiji) / "DEFCoN", inputs, same_kind=lambda path: True, what="Fiji folder"
        )


def _add_info(sub):
    p = sub.add_parser(
        "info",
        help="describe a TrainingSet, compact set or model, or this system",
        description="Print a summary of a defcon file; with --system, the versions of "
        "defcon, Keras and its backend, the backend in use (KERAS_BACKEND), its devices "
        "and bfloat16 support.",
    )
    p.add_argument("file", nargs="?", help="HDF5 training set, .keras/.h5 model")
    p.add_argument(
        "--system", action="store_true", help="describe the Keras backend and devices instead"
    )
    p.set_defaults(run=_run_info)


def _run_info(args):
    if args.system == (args.file is not None):
        raise SystemExit("defcon info: error: give a FILE or --system (not both)")
    if args.system:
        from .backends import system_summary

        print(system_summary())
    else:
        _print_info(args.file)


def _add_calibrate(sub):
    p = sub.add_parser(
        "calibrate",
        help="estimate a microscope's imaging conditions from a stack",
        description="Estimate camera offset and gain, background, PSF width and shape, "
        "photons per spot and density from an SMLM stack; write them as JSON (for "
        "defcon simulate --like, which renders the measured PSF) and a one-page PNG "
        "report beside it. The stack needs some sparse frames (isolated spots); dark "
        "frames (--dark) make the gain and offset much more certain. Read 'warnings' "
        "in the JSON. Example: defcon calibrate my_stack.tif --dark dark.tif --camera "
        "emccd --out calib.json",
    )
    p.add_argument("stack", help="TIFF stack of raw camera frames (ADU)")
    p.add_argument(
        "--pixel-size",
        type=float,
        metavar="NM",
        help="image pixel size in nm (default: the TIFF's ImageJ/OME metadata, else 100)",
    )
    p.add_argument(
        "--dark", metavar="TIF", help="dark frames (shutter closed): the offset and read noise"
    )
    p.add_argument(
        "--camera",
        choices=("ccd", "emccd", "scmos"),
        default="ccd",
        help="camera kind; emccd doubles the shot-noise variance (default ccd)",
    )
    p.add_argument("--out", required=True, help="calibration JSON; the report is OUT with .png")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args):
    from pathlib import Path

    from .calibrate import calibrate, write_calibration, write_report

    result = calibrate(args.stack, args.pixel_size, args.dark, args.camera)
    report = Path(args.out).with_suffix(".png")
    write_calibration(result, args.out)
    write_report(result, report)
    print(
        f"wrote {args.out} and {report}: PSF sigma {result['psf_sigma_px']:.2f} px, "
        f"{result['photons_full_frame']:.0f} photons per spot, background "
        f"{result['background_electrons']:.1f} e-, offset {result['offset_adu']:.1f} ADU, "
        f"{result['adu_per_electron']:.3g} ADU per e- ({result['n_spots']} spots)"
    )


def _add_clean(sub):
    p = sub.add_parser(
        "clean",
        help="remove temporary files left by interrupted defcon runs",
        description="Remove the hidden temporary files (.NAME.defcon-PID-*.tmp*) that defcon "
        "processes killed hard (SIGKILL, power loss) left behind, and the incomplete "
        "datasets of TrainingSets in FOLDER. Files of defcon processes still running "
        "are kept. Each defcon write also cleans its own folder, so this is only "
        "needed to reclaim space at once.",
    )
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="folders to clean")
    p.add_argument("--recursive", "-r", action="store_true", help="also clean sub-folders")
    p.set_defaults(run=_run_clean)


def _run_clean(args):
    from .cleaning import clean

    removed = clean(args.folders, recursive=args.recursive)
    for line in removed:
        print(f"removed {line}")
    print(f"{len(removed)} leftover(s) removed" if removed else "nothing to clean")


def _print_info(path):
    from .info import describe

    print(describe(path))


def build_parser():
    """The argument parser of the ``defcon`` command."""
    parser = argparse.ArgumentParser(
        prog="defcon",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
        description="Count fluorescent emitters in SMLM stacks with DEFCoN density networks.",
    )
    parser.add_argument("--version", action="version", version=f"defcon {__version__}")
    _add_output_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_simulate,
        _add_calibrate,
        _add_build,
        _add_compact,
        _add_train,
        _add_predict,
        _add_export,
        _add_info,
        _add_clean,
    ):
        add(sub)
    for command in sub.choices.values():
        # Also after the subcommand; not given there, the value before it stands.
        _add_output_options(command, default=argparse.SUPPRESS)
    return parser


def _add_output_options(parser, default=False):
    group = parser.add_argument_group("output")
    flag = {"action": "store_true", "default": default}
    group.add_argument("--quiet", help="warnings and errors only, no progress bars", **flag)
    group.add_argument("--verbose", help="defcon's debug logs", **flag)
    group.add_argument("--debug", help="defcon's debug logs and tracebacks", **flag)


def main(argv=None):
    """Entry point of the ``defcon`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s"
    )
    if args.debug or args.verbose:  # defcon's own; other libraries' debug logs are noise here
        log.setLevel(logging.DEBUG)
    # A job manager's SIGTERM stops the work like Ctrl-C: partial outputs are removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        # Many stacks: the workers load the backend and take the device, not this process.
        many = args.command == "predict" and _predicts_many(args)
        device = None if many else getattr(args, "device", None)
        if _needs_backend(args) and not many:
            _import_backend(show_device=args.command in ("train", "predict"), device=device)
        if device is None:
            args.run(args)
        else:
            from .backends import device_scope

            with device_scope(device):
                args.run(args)
    except DefconError as err:
        if args.debug:
            raise
        print(f"defcon {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"defcon {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _needs_backend(args):
    """Whether the command loads Keras and its backend (info only for a model or --system)."""
    if args.command == "info":
        from .info import loads_a_network

        return args.system or (args.file is not None and loads_a_network(args.file))
    return args.command in KERAS_COMMANDS


def _import_backend(show_device, device=None):
    """Import Keras and its backend quietly; log the backend and the device it will use.

    With ``device='cpu'`` on JAX, ``JAX_PLATFORMS=cpu`` is set first (when JAX
    is not imported yet), so JAX does not start on a GPU at all.
    """
    from .backends import configured_backend

    backend = configured_backend()
    if backend == "tensorflow":
        _import_tensorflow(show_device)
        return
    if device == "cpu" and backend == "jax" and "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # JAX logs each accelerator plugin it looked for (TPU, CUDA) at INFO.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    import keras

    if show_device:
        from .backends import backend_version, list_devices

        gpus = list_devices("gpu")
        where = f"GPU ({', '.join(name for _, name in gpus)})" if gpus else "CPU (no GPU found)"
        log.info("Keras %s on %s %s, %s", keras.__version__, backend, backend_version(), where)


def _import_tensorflow(show_device):
    """Import TensorFlow without its start-up chatter; log the device it will use.

    TensorFlow's C++ libraries write notes (oneDNN, CUDA stubs) straight to the
    stderr file descriptor while loading, before any log setting applies, so
    the descriptor points elsewhere meanwhile. Should the import fail, what
    was written is shown.
    """
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    if show_device:
        gpus = tf.config.list_physical_devices("GPU")
        device = f"GPU ({', '.join(g.name for g in gpus)})" if gpus else "CPU (no GPU found)"
        log.info("TensorFlow %s on %s", tf.__version__, device)


if __name__ == "__main__":
    sys.exit(main())
