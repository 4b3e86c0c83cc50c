"""Write the golden files that the Java tests of defcon-serving must reproduce.

Exports DEFCoN networks with ``defcon.export.export_fiji`` (the pretrained DEFCoN model
``defcon_tf13.h5`` from the shared reference folder, and a random ``FCN(seed=0)``), and
writes inputs and the outputs that Python computes for them:

- ``<model>/DEFCoN/tf_density_count`` and ``tf_max_count`` (7x7 box): the exports;
- ``inputs/*.f32``, ``expected/*.f32``: raw little-endian float32 arrays, row-major;
- ``cases.properties``: one entry per case with the array files, shapes and scalars.

Expected values come from Keras (``model.predict``) for defcon's exports, and from the
reference DEFCoN-ImageJ SavedModel run with ``tf.compat.v1`` for the reference test. Frames
whose sides are not multiples of 4 are padded on the bottom and right by replicating the
edge, predicted, and cropped back: the rule of the Java API.

Usage::

    python java-serving/make_golden.py [--out java-serving/target/golden] [--reference DIR]
"""

import argparse
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "target" / "golden"
DEFAULT_REFERENCE = HERE.parents[1] / "shared" / "reference"
BOX = 7
MULTIPLE = 4

log = logging.getLogger("make_golden")


def pad_edge(frame, multiple=MULTIPLE):
    """Pad (H, W) bottom/right with edge values to multiples of ``multiple``."""
    rows, cols = frame.shape
    return np.pad(frame, ((0, -rows % multiple), (0, -cols % multiple)), mode="edge")


def local_counts(density, box=BOX):
    """Box sums ('valid', step 1) of an (H, W) map, in float64."""
    s = np.zeros((density.shape[0] + 1, density.shape[1] + 1))
    s[1:, 1:] = density.astype(np.float64).cumsum(0).cumsum(1)
    return s[box:, box:] - s[:-box, box:] - s[box:, :-box] + s[:-box, :-box]


def synthetic_frames(rng):
    """Small SMLM-like frames (background, shot noise, a few spots) of several sizes."""
    frames = {}
    for name, (rows, cols, spots) in {"frame_32x48": (32, 48, 6), "frame_30x45": (30, 45, 4),
                                      "frame_36x28": (36, 28, 3), "frame_8x12": (8, 12, 1)}.items():
        yy, xx = np.mgrid[0:rows, 0:cols] + 0.5
        image = np.full((rows, cols), 100.0)
        for _ in range(spots):
            y, x = rng.uniform(0, rows), rng.uniform(0, cols)
            image += rng.uniform(500, 2000) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3 ** 2))
        frames[name] = rng.poisson(image).astype(np.float32)
    frames["flat_16x16"] = np.full((16, 16), 7.0, np.float32)
    return frames


class Golden:
    """Collects arrays and properties under one folder."""

    def __init__(self, root):
        self.root = root
        self.props = {}
        self.cases = []

    def array(self, relative, array):
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        np.ascontiguousarray(array, dtype="<f4").tofile(path)
        return relative

    def set(self, key, value):
        if isinstance(value, float):
            value = repr(float(value))
        self.props[key] = str(value)

    def write(self):
        self.set("cases", ",".join(self.cases))
        lines = ["# Golden files for defcon-serving, written by make_golden.py: do not edit.",
                 "# Arrays are raw little-endian float32, row-major; paths are relative to this file."]
        lines += [f"{key}={value}" for key, value in sorted(self.props.items())]
        (self.root / "cases.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")


def predict_density(model, frame):
    """Density of an (H, W) frame of any size, by the pad-predict-crop rule."""
    padded = pad_edge(frame)
    out = model.predict(padded[None, :, :, None], verbose=0)[0, :, :, 0]
    return out[: frame.shape[0], : frame.shape[1]]


def add_model_cases(golden, name, model, frames, test_data):
    from defcon.export import export_fiji

    fiji = export_fiji(model, golden.root / name, box=BOX)
    golden.set(f"model.{name}.density", (fiji / "tf_density_count").relative_to(golden.root).as_posix())
    golden.set(f"model.{name}.max_count", (fiji / "tf_max_count").relative_to(golden.root).as_posix())
    golden.set(f"model.{name}.box", BOX)
    max_model = model.with_max_count(pool=(BOX, BOX))
    for frame_name, frame in frames.items():
        case = f"{name}.{frame_name}"
        density = predict_density(model, frame)
        golden.cases.append(case)
        golden.set(f"case.{case}.model", name)
        golden.set(f"case.{case}.input", golden.array(f"inputs/{frame_name}.f32", frame))
        golden.set(f"case.{case}.rows", frame.shape[0])
        golden.set(f"case.{case}.cols", frame.shape[1])
        golden.set(f"case.{case}.density", golden.array(f"expected/{case}.density.f32", density))
        golden.set(f"case.{case}.count", float(density.sum(dtype=np.float64)))
        if min(frame.shape) >= BOX:
            local = local_counts(density)
            golden.set(f"case.{case}.local_counts", golden.array(f"expected/{case}.local.f32", local))
            golden.set(f"case.{case}.max_local_count", float(local.max()))
            padded = pad_edge(frame)
            max_count = max_model.predict(padded[None, :, :, None], verbose=0)[0, 0]
            golden.set(f"case.{case}.max_count", float(max_count))
    if test_data is not None:
        densities = np.stack([predict_density(model, f) for f in test_data])
        golden.set(f"test_data.{name}.density",
                   golden.array(f"expected/{name}.test_data.density.f32", densities))
        golden.set(f"test_data.{name}.counts",
                   ",".join(repr(float(d.sum(dtype=np.float64))) for d in densities))
        golden.set(f"test_data.{name}.max_local_counts",
                   ",".join(repr(float(local_counts(d).max())) for d in densities))


def add_reference_case(golden, reference, test_data):
    """Densities of the reference DEFCoN-ImageJ model on test_data.tif, via tf.compat.v1."""
    import tensorflow as tf

    model_dir = reference / "defcon-imagej" / "tf_density_count"
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(model_dir))
        densities = np.stack([
            session.run("output_tensor:0", {"input_tensor:0": f[None, :, :, None]})[0, :, :, 0]
            for f in test_data])
    golden.set("test_data.reference.density",
               golden.array("expected/reference.test_data.density.f32", densities))
    golden.set("test_data.reference.counts",
               ",".join(repr(float(d.sum(dtype=np.float64))) for d in densities))


def add_bad_model(golden):
    """A SavedModel without DEFCoN's tensor names, for the Java error tests."""
    import tensorflow as tf

    path = golden.root / "bad" / "no_input_tensor"
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, None, None, 1), name="x")
        tf.identity(x, name="y")
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], strip_default_attrs=True)
            builder.save()
    golden.set("model.bad.no_input_tensor", path.relative_to(golden.root).as_posix())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="golden folder (replaced)")
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE,
                        help="the shared reference folder (defcon_tf13.h5, defcon-imagej/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="make_golden: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    start = time.perf_counter()

    import tensorflow as tf
    import tifffile

    from defcon.networks import FCN

    tf.get_logger().setLevel(logging.ERROR)

    out = args.out.resolve()
    staging = out.with_name(out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    golden = Golden(staging)
    frames = synthetic_frames(np.random.default_rng(20240601))

    reference = args.reference.resolve()
    have_reference = (reference / "defcon_tf13.h5").is_file() and \
        (reference / "defcon-imagej" / "tf_density_count" / "saved_model.pb").is_file()
    test_data = None
    if have_reference:
        test_data = tifffile.imread(reference / "defcon-imagej" / "test_data.tif").astype(np.float32)
        golden.set("test_data.frames", test_data.shape[0])
        golden.set("test_data.rows", test_data.shape[1])
        golden.set("test_data.cols", test_data.shape[2])
        add_reference_case(golden, reference, test_data)
        add_model_cases(golden, "tf13", FCN.from_file(reference / "defcon_tf13.h5"), frames, test_data)
    else:
        log.warning("%s: reference folder not found; writing the random-model cases only "
                    "(the Java tests that need them skip)", reference)
    add_model_cases(golden, "random", FCN(output="density", seed=0), frames, test_data)
    add_bad_model(golden)
    golden.set("reference_cases", "true" if have_reference else "false")
    golden.write()

    shutil.rmtree(out, ignore_errors=True)
    os.replace(staging, out)
    log.info("%d cases%s written to %s in %.1f s", len(golden.cases),
             " + reference test_data" if have_reference else "", out, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
