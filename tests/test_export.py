"""Exports for Fiji / TensorFlow 1.x and TensorFlow 2 (defcon.export).

Every TF1 export is loaded exactly as DEFCoN-ImageJ loads it (tag ``serve``, feed
``input_tensor``, fetch ``output_tensor``) through ``tf.compat.v1`` and compared with
``model.predict``. The Java side (java-serving) checks the same folders with TensorFlow
Java 1.15 and 1.6.
"""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from defcon import export
from defcon.errors import DefconError, ExportError, MissingFileError, UnsupportedFileError
from defcon.export import export_fiji, save_tf1_model, save_tf2_model, tf1_op_types
from defcon.networks import FCN

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
TOLERANCE = 1e-5


def _reference(*parts):
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"{path} not found: the shared reference folder (../shared/reference) is "
            "needed for tests against the published DEFCoN model"
        )
    return path


def _frames(shape=(2, 32, 48), seed=0):
    """Raw SMLM-like frames: background, Poisson noise, a few bright spots."""
    rng = np.random.default_rng(seed)
    n, rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols] + 0.5
    frames = np.full(shape, 100.0)
    for i in range(n):
        for _ in range(4):
            y, x = rng.uniform(0, rows), rng.uniform(0, cols)
            frames[i] += rng.uniform(300, 3000) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 3.4)
    return rng.poisson(frames).astype(np.float32)[..., None]


def run_tf1(export_dir, x, fetch="output_tensor:0"):
    """Load a SavedModel as the DEFCoN-ImageJ plugin does and run it on ``x``."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(export_dir))
        return session.run(fetch, {"input_tensor:0": x})


@pytest.fixture(scope="module")
def tf13():
    return FCN.from_file(_reference("defcon_tf13.h5"))


@pytest.fixture(scope="module")
def random_fcn():
    return FCN(output="density", seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, random_fcn):
    """TF1 exports of the random network (density and 7x7 max count), made once."""
    root = tmp_path_factory.mktemp("exports")
    return {
        "density": save_tf1_model(random_fcn, root / "density"),
        "max_count": save_tf1_model(random_fcn.with_max_count(), root / "max_count"),
    }


# ----------------------------------------------------------------------------- TF1 density
def test_tf1_density_of_random_network_matches_keras_on_non_square_frames(random_fcn, exported):
    x = _frames((2, 32, 48))
    got = run_tf1(exported["density"], x)
    assert got.shape == (2, 32, 48, 1)
    np.testing.assert_allclose(got, random_fcn.predict(x, verbose=0), atol=TOLERANCE, rtol=0)
    # Any other size, multiple of 4, with the same folder.
    x = _frames((1, 20, 8), seed=1)
    np.testing.assert_allclose(
        run_tf1(exported["density"], x), random_fcn.predict(x, verbose=0), atol=TOLERANCE, rtol=0
    )


def test_tf1_density_of_pretrained_model_matches_keras_and_reference(tf13, tmp_path):
    out = save_tf1_model(tf13, tmp_path / "tf_density_count")
    assert out == tmp_path / "tf_density_count"
    x = _frames((2, 32, 48), seed=3)
    np.testing.assert_allclose(run_tf1(out, x), tf13.predict(x, verbose=0), atol=TOLERANCE, rtol=0)

    import tifffile

    stack = tifffile.imread(_reference("defcon-imagej", "test_data.tif"))
    assert stack.dtype == np.uint16
    frames = stack.astype(np.float32)[..., None]  # raw values, as the plugin feeds them
    ours = np.concatenate([run_tf1(out, f[None]) for f in frames])
    np.testing.assert_allclose(ours, tf13.predict(frames, verbose=0), atol=TOLERANCE, rtol=0)
    reference = np.concatenate(
        [run_tf1(_reference("defcon-imagej", "tf_density_count"), f[None]) for f in frames]
    )
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_op_types_are_those_of_the_reference_plugin_model(exported):
    reference = tf1_op_types(_reference("defcon-imagej", "tf_density_count"))
    density = tf1_op_types(exported["density"])
    max_count = tf1_op_types(exported["max_count"])
    assert density <= reference, f"ops TF Java 1.6 may lack: {density - reference}"
    assert max_count <= reference | {"AvgPool"}, f"extra ops: {max_count - reference}"
    assert "AvgPool" in tf1_op_types(_reference("defcon-example-serving", "tf_max_count"))
    assert {"Placeholder", "Identity", "Conv2DBackpropInput", "Floor"} <= density
    assert not {"VarHandleOp", "StatefulPartitionedCall", "AddV2", "VariableV2"} & density


def test_flat_frame_normalises_to_zeros_not_nan(random_fcn, exported):
    x = np.concatenate(
        [
            np.full((1, 16, 24, 1), 42.0, np.float32),
            np.zeros((1, 16, 24, 1), np.float32),
            _frames((1, 16, 24)),
        ]
    )
    normalised = run_tf1(exported["density"], x, "hist_norm/normalised:0")
    assert np.all(normalised[:2] == 0)
    assert normalised[2].min() == 0 and normalised[2].max() == 1
    density = run_tf1(exported["density"], x)
    assert np.isfinite(density).all()
    np.testing.assert_allclose(density, random_fcn.predict(x, verbose=0), atol=TOLERANCE, rtol=0)
    # A frame that is not flat, however small its span, is still normalised to [0, 1]
    # (a plain span + floor(1 / (1 + span)) guard would divide by ~1 here).
    tiny = np.zeros((1, 8, 8, 1), np.float32)
    tiny[0, 3, 4, 0] = 1e-30
    assert run_tf1(exported["density"], tiny, "hist_norm/normalised:0").max() == 1


def test_division_divides_the_output(random_fcn, tmp_path):
    out = save_tf1_model(random_fcn, tmp_path / "divided", division=4)
    x = _frames((1, 32, 48))
    np.testing.assert_allclose(
        run_tf1(out, x), random_fcn.predict(x, verbose=0) / 4, atol=TOLERANCE / 4, rtol=0
    )
    for bad in (0, -1.5, float("nan"), float("inf"), "two"):
        with pytest.raises(ExportError, match="division"):
            save_tf1_model(random_fcn, tmp_path / "bad", division=bad)
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- TF1 max count
def test_max_count_export_equals_keras_max_count_model(random_fcn, exported, tmp_path):
    x = _frames((3, 32, 48), seed=5)
    keras_7 = random_fcn.with_max_count()
    got = run_tf1(exported["max_count"], x)
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got, keras_7.predict(x, verbose=0), atol=TOLERANCE, rtol=0)
    keras_5 = random_fcn.with_max_count(pool=(5, 5))
    out = save_tf1_model(keras_5, tmp_path / "max5", division=2)
    np.testing.assert_allclose(
        run_tf1(out, x), keras_5.predict(x, verbose=0) / 2, atol=TOLERANCE, rtol=0
    )


# ----------------------------------------------------------------------------- TF2
def test_tf2_export_serving_default_matches(random_fcn, tmp_path):
    x = _frames((2, 32, 48), seed=7)
    out = save_tf2_model(random_fcn, tmp_path / "tf2")
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["input_tensor"]
    result = serve(input_tensor=tf.constant(x))
    assert set(result) == {"density"}
    np.testing.assert_allclose(
        result["density"].numpy(), random_fcn.predict(x, verbose=0), atol=TOLERANCE, rtol=0
    )
    max_model = random_fcn.with_max_count()
    out = save_tf2_model(max_model, tmp_path / "tf2_max")
    result = tf.saved_model.load(str(out)).signatures["serving_default"](
        input_tensor=tf.constant(x)
    )
    np.testing.assert_allclose(
        result["max_count"].numpy(), max_model.predict(x, verbose=0), atol=TOLERANCE, rtol=0
    )


# ----------------------------------------------------------------------------- Fiji folder
def test_export_fiji_layout_from_a_model_file(tmp_path):
    model_file = _reference("defcon_tf13.h5")
    root = export_fiji(str(model_file), tmp_path / "plugins", box_size=5)
    assert root == tmp_path / "plugins" / "DEFCoN"
    assert sorted(p.name for p in root.iterdir()) == [
        "README.txt",
        "tf_density_count",
        "tf_max_count",
    ]
    for name in ("tf_density_count", "tf_max_count"):
        assert (root / name / "saved_model.pb").is_file()
    readme = (root / "README.txt").read_text()
    assert "Fiji.app/plugins" in readme and "5x5" in readme and "Maximum local count" in readme
    x = _frames((1, 32, 48), seed=9)
    max_model = FCN.from_file(model_file).density_to_max_count(pool=(5, 5))
    np.testing.assert_allclose(
        run_tf1(root / "tf_max_count", x), max_model.predict(x, verbose=0), atol=TOLERANCE, rtol=0
    )
    assert sorted(p.name for p in (tmp_path / "plugins").iterdir()) == ["DEFCoN"]  # no leftovers


def test_export_fiji_replaces_its_own_folder_only(random_fcn, tmp_path):
    root = export_fiji(random_fcn, tmp_path)
    assert export_fiji(random_fcn, tmp_path, division=2) == root  # a re-export replaces it
    assert "divided by 2" in (root / "README.txt").read_text()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UnsupportedFileError, match="DEFCoN"):
        export_fiji(random_fcn, tmp_path)
    assert (root / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DEFCoN"]


# ----------------------------------------------------------------------------- atomicity
def test_failed_export_leaves_nothing_and_keeps_an_existing_one(random_fcn, tmp_path, monkeypatch):
    builder = tf.compat.v1.saved_model.Builder  # the class

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    target = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(builder, "save", boom)
        with pytest.raises(RuntimeError, match="disk full"):
            save_tf1_model(random_fcn, target)
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(RuntimeError, match="disk full"):
            export_fiji(random_fcn, tmp_path / "fiji")
        assert [p.name for p in tmp_path.iterdir()] == ["fiji"]
        assert list((tmp_path / "fiji").iterdir()) == []

    save_tf1_model(random_fcn, target)
    before = (target / "saved_model.pb").read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(builder, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            save_tf1_model(random_fcn, target, division=3)
    assert (target / "saved_model.pb").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fiji", "model"]
    save_tf1_model(random_fcn, target, division=3)  # a complete export replaces it
    assert (target / "saved_model.pb").read_bytes() != before


def test_existing_paths_that_are_not_exports_are_never_replaced(random_fcn, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    a_file = tmp_path / "model.pb"
    a_file.write_text("x")
    for path in (folder, a_file):
        with pytest.raises(UnsupportedFileError, match="not an export"):
            save_tf1_model(random_fcn, path)
    assert (folder / "holiday.jpg").read_bytes() == b"\xff\xd8" and a_file.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_tf1_model(random_fcn, empty) / "saved_model.pb").is_file()


# ----------------------------------------------------------------------------- rejections
@pytest.mark.parametrize("output", ["seg", "both"])
def test_bad_model_kinds_are_rejected(output, tmp_path):
    model = FCN(output=output, seed=0)
    for save in (save_tf1_model, save_tf2_model):
        with pytest.raises(ExportError, match=f"outputs '{output}'") as info:
            save(model, tmp_path / "out")
        assert isinstance(info.value, DefconError) and isinstance(info.value, ValueError)
    if output == "seg":
        with pytest.raises(ExportError, match="'seg'"):
            export_fiji(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_other_bad_arguments_are_rejected(random_fcn, tmp_path):
    with pytest.raises(ExportError, match="defcon FCN"):
        save_tf1_model(object(), tmp_path / "out")
    for box in (0, -3, 2.5, True):
        with pytest.raises(ExportError, match="box"):
            export_fiji(random_fcn, tmp_path, box_size=box)
    with pytest.warns(DeprecationWarning, match="box_size"):
        export_fiji(random_fcn, tmp_path / "old_name", box=5)
    assert "5x5" in (tmp_path / "old_name" / "DEFCoN" / "README.txt").read_text()
    with pytest.raises(MissingFileError):
        tf1_op_types(tmp_path / "nothing")
    with pytest.raises(MissingFileError):
        export_fiji(tmp_path / "missing.keras", tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "saved_model.pb").write_bytes(b"\x07garbage")
    with pytest.raises(UnsupportedFileError):
        tf1_op_types(tmp_path / "junk")


def test_fcn_save_tf_model_delegates(random_fcn, tmp_path):
    out = random_fcn.save_tf_model(tmp_path / "tf_model", division=2)
    assert Path(out) == tmp_path / "tf_model"
    x = _frames()
    np.testing.assert_allclose(
        run_tf1(out, x), random_fcn.predict(x, verbose=0) / 2, rtol=1e-5, atol=1e-7
    )
    assert export.INPUT_NAME == "input_tensor" and export.OUTPUT_NAME == "output_tensor"
