"""ZEISS ZEN .czann export and verified reading (defcon.czann)."""

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("czmodel", reason="czmodel is not installed (pip install 'defcon[czann]')")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from czmodel.core.model_metadata import ModelType  # noqa: E402
from czmodel.core.util._extract_model import extract_czann_model  # noqa: E402
from czmodel.core.util.common import validate_metadata  # noqa: E402

from defcon.czann import (  # noqa: E402
    CHECKSUM_FILE,
    METADATA_FILE,
    MODEL_FILE,
    TILE_SIZE,
    CzannModel,
    export_czann,
    is_czann,
    read_czann,
)
from defcon.errors import IntegrityError, OverwriteError  # noqa: E402
from defcon.networks import FCN  # noqa: E402
from defcon.predict import receptive_margin  # noqa: E402

pytestmark = pytest.mark.tensorflow_only


@pytest.fixture(scope="module")
def model():
    return FCN.pretrained()


@pytest.fixture(scope="module")
def czann(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("czann") / "defcon.czann"
    return export_czann(
        model, path, name="DEFCoN test", description="test model", pixel_size_nm=100
    )


def raw_frames(shape, seed):
    """Camera-like raw values (not scaled): the network normalises each frame itself."""
    return np.random.default_rng(seed).uniform(100, 2000, shape).astype(np.float32)


def rewritten(source, target, replace=None, add=None):
    """Copy a zip entry by entry, replacing some entries' bytes and adding others."""
    replace, add = replace or {}, add or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for info in src.infolist():
            out.writestr(info.filename, replace.get(info.filename, src.read(info)))
        for name, data in add.items():
            out.writestr(name, data)
    return target


def test_czmodel_reads_and_validates_the_file(czann, tmp_path):
    assert is_czann(czann)
    with zipfile.ZipFile(czann) as archive:
        assert sorted(archive.namelist()) == sorted([METADATA_FILE, MODEL_FILE, CHECKSUM_FILE])
    metadata, model_path = extract_czann_model(str(czann), tmp_path)
    margin = receptive_margin()
    assert metadata.model_type is ModelType.REGRESSION
    assert metadata.input_shape == metadata.output_shape == [TILE_SIZE, TILE_SIZE, 1]
    assert metadata.min_overlap == [2 * margin, 2 * margin]
    assert metadata.model_name == "DEFCoN test"
    assert metadata.scaling == pytest.approx((1e-7, 1e-7))
    # The ONNX model as ZEN gets it: valid, batch free, sides fixed to the declared tile.
    proto = onnx.load(model_path)
    onnx.checker.check_model(proto)
    shapes = [
        [d.dim_value for d in v.type.tensor_type.shape.dim][1:]
        for v in (proto.graph.input[0], proto.graph.output[0])
    ]
    assert shapes == [[TILE_SIZE, TILE_SIZE, 1]] * 2
    validate_metadata(metadata, *shapes)


def test_onnxruntime_predictions_equal_keras(czann, model):
    stack = raw_frames((2, 38, 54), seed=3)  # padded to 40 x 56, as defcon pads
    expected = model.predict_stack(stack)
    loaded = FCN.from_file(czann)
    assert isinstance(loaded, CzannModel) and loaded.output_kind == "density"
    actual = loaded.predict_stack(stack)
    assert actual.shape == expected.shape == (2, 38, 54, 1)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    # ZEN feeds [0, 1] floats: the per-frame normalisation makes the scale irrelevant.
    np.testing.assert_allclose(loaded.predict_stack(stack / 2000), expected, rtol=0, atol=1e-5)


def test_the_stored_model_runs_on_zen_tiles(czann, model):
    with zipfile.ZipFile(czann) as archive:
        session = ort.InferenceSession(archive.read(MODEL_FILE), providers=["CPUExecutionProvider"])
    tile = raw_frames((1, TILE_SIZE, TILE_SIZE, 1), seed=4)
    density = session.run(None, {session.get_inputs()[0].name: tile})[0]
    np.testing.assert_allclose(density, model.predict_stack(tile), rtol=0, atol=1e-5)


def test_metadata_and_info(czann, capsys):
    from defcon.cli import main

    metadata, session = read_czann(czann)
    assert metadata["Type"] == "Regression" and metadata["ModelName"] == "DEFCoN test"
    assert metadata["MinOverlap"] == [2 * receptive_margin()] * 2
    assert metadata["defcon"]["checksums"] == "verified"
    assert metadata["defcon"]["description"] == "test model"
    assert metadata["defcon"]["defcon_receptive_margin_px"] == str(receptive_margin())
    assert session.get_inputs()[0].shape == ["batch", "y", "x", 1]
    assert main(["info", str(czann)]) == 0
    text = capsys.readouterr().out
    assert f"border size: {receptive_margin()} px" in text
    assert "Regression 'DEFCoN test'" in text and "100 nm x 100 nm" in text


def test_tampered_files_are_refused(czann, tmp_path):
    metadata = json.loads(zipfile.ZipFile(czann).read(METADATA_FILE))
    metadata["MinOverlap"] = [0, 0]
    modified = rewritten(czann, tmp_path / "modified.czann", {METADATA_FILE: json.dumps(metadata)})
    with pytest.raises(IntegrityError, match="'model.json' does not match its SHA-256"):
        read_czann(modified)
    extra = rewritten(czann, tmp_path / "extra.czann", add={"notes.txt": "hi"})
    with pytest.raises(IntegrityError, match="'notes.txt' is not listed"):
        FCN.from_file(extra)
    unsafe = rewritten(czann, tmp_path / "unsafe.czann", add={"../evil.txt": "x"})
    with pytest.raises(IntegrityError, match="unsafe path '../evil.txt'"):
        read_czann(unsafe)


def test_export_never_replaces_an_input_or_a_foreign_file(model, tmp_path, capsys):
    from defcon.cli import main

    keras_file = tmp_path / "model.keras"
    model.save(keras_file)
    before = keras_file.read_bytes()
    with pytest.raises(OverwriteError, match="also an input"):
        export_czann(keras_file, keras_file)
    foreign = tmp_path / "other.czann"
    foreign.write_text("not a model")
    assert main(["export", str(keras_file), "--czann", str(foreign)]) != 0
    assert "not a --czann export written by defcon" in capsys.readouterr().err
    assert keras_file.read_bytes() == before and foreign.read_text() == "not a model"
    out = tmp_path / "cli.czann"
    assert main(["export", str(keras_file), "--czann", str(out)]) == 0
    assert read_czann(out)[0]["ModelName"] == f"DEFCoN {model.name}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli.czann", "model.keras", "other.czann"]
