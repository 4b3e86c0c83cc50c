"""bioimage.io packages, ONNX export and verified loading (defcon.package)."""

import os

# bioimageio.core defaults KERAS_BACKEND to torch; defcon runs on TensorFlow.
os.environ["KERAS_BACKEND"] = "tensorflow"

import json  # noqa: E402
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from defcon.errors import ExportError, IntegrityError  # noqa: E402
from defcon.networks import FCN  # noqa: E402
from defcon.package import (
    KERAS_FILE,
    ONNX_FILE,
    TF_FILE,
    describe_package,  # noqa: E402
    export_bioimageio,
    export_onnx,
    is_package,
    load_package,
)


@pytest.fixture(scope="module")
def trained(tiny_training):
    """defcon.train output of the shared small training."""
    return tiny_training[1]


@pytest.fixture(scope="module")
def model(trained):
    return FCN.from_file(trained["model"])


@pytest.fixture(scope="module")
def package(trained, compact_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "tiny.zip"
    return export_bioimageio(
        trained["model"],
        path,
        authors=["Test Author"],
        training_dir=trained["model"].parent,
        training_set=compact_file,
        validation={"count MAE (held-out stack)": 0.42},
    )


def raw_frames(shape, seed):
    """Camera-like raw values (not scaled): the network normalises each frame itself."""
    return np.random.default_rng(seed).uniform(100, 2000, shape).astype(np.float32)


def assert_same_predictions(actual, expected):
    """Equal but for TensorFlow's CPU run-to-run noise: oneDNN kernels are not bitwise
    reproducible from one call to the next when threads are contended (seen: 1e-8)."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-7)


def rewrite_zip(source, target, change=None, extra=()):
    """Copy a zip, applying change(name, data) -> data or None (drop) to each entry."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            data = old.read(name) if change is None else change(name, old.read(name))
            if data is not None:
                new.writestr(name, data)
        for name, data in extra:
            new.writestr(zipfile.ZipInfo(name), data)
    return target


def test_package_validates_and_passes_bioimageio_core_test(package, tmp_path, monkeypatch):
    import bioimageio.core
    from bioimageio.spec import load_description

    monkeypatch.chdir(tmp_path)  # bioimageio.core unzips TensorFlow weights into the cwd
    descr = load_description(package, perform_io_checks=True)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    summary = bioimageio.core.test_model(package)
    assert summary.status == "passed", summary.format()
    names = " ".join(detail.name for detail in summary.details)
    assert "(onnx)" in names and "(tensorflow_saved_model_bundle)" in names


def test_package_holds_every_file_with_its_sha256(package, model):
    import hashlib

    with zipfile.ZipFile(package) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        listed = [
            rdf["documentation"],
            *rdf["covers"],
            *rdf["attachments"],
            *rdf["weights"].values(),
            rdf["inputs"][0]["test_tensor"],
            rdf["outputs"][0]["test_tensor"],
        ]
        for entry in listed:
            assert hashlib.sha256(archive.read(entry["source"])).hexdigest() == entry["sha256"]
        names = {entry["source"] for entry in listed}
        assert {
            KERAS_FILE,
            ONNX_FILE,
            TF_FILE,
            "tiny.ini",
            "history.tsv",
            "training_provenance.json",
        } <= names
        with zipfile.ZipFile(archive.open(TF_FILE)) as saved_model:
            assert "saved_model.pb" in saved_model.namelist()
        provenance = json.loads(archive.read("training_provenance.json"))
        readme = archive.read("README.md").decode()
        test_input = np.load(archive.open("test_input.npy"))
        test_output = np.load(archive.open("test_output.npy"))
    assert rdf["weights"]["onnx"]["opset_version"] == 17
    assert rdf["weights"]["onnx"]["parent"] == "tensorflow_saved_model_bundle"
    assert rdf["license"] == "BSD-3-Clause" and rdf["cite"][0]["url"]
    assert [a.get("id", a["type"]) for a in rdf["inputs"][0]["axes"]] == [
        "batch",
        "y",
        "x",
        "channel",
    ]
    assert rdf["inputs"][0]["axes"][1]["size"] == {"min": 16, "step": 4}
    assert {s["name"] for s in provenance["built_from"]["datasets"]} == {"s0", "s1"}
    assert all(len(s["source_sha256"]) == 64 for s in provenance["built_from"]["datasets"])
    assert "# Validation" in readme and "0.42" in readme and "deepImageJ" in readme
    assert test_input.shape == (1, 64, 48, 1) and test_input.dtype == np.float32
    assert test_input.max() > 1  # raw pixel values go in
    assert_same_predictions(test_output, model.predict(test_input, verbose=0))


def test_load_package_gives_the_same_network(package, model, tmp_path):
    frames = raw_frames((2, 36, 52, 1), seed=1)
    expected = model.predict(frames, verbose=0)
    folder = tmp_path / "unpacked"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    for source in (package, folder):
        loaded = load_package(source)
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
        for mine, original in zip(loaded.get_weights(), model.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, original)  # bit for bit
        assert_same_predictions(loaded.predict(frames, verbose=0), expected)
    assert is_package(package) and is_package(folder)
    assert not is_package(folder / KERAS_FILE) and not is_package(tmp_path / "absent.zip")


@pytest.mark.parametrize("member", [KERAS_FILE, ONNX_FILE, TF_FILE])
def test_a_changed_byte_in_any_weight_file_is_refused(package, tmp_path, member):
    def flip(name, data):
        if name != member:
            return data
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

    tampered = rewrite_zip(package, tmp_path / "tampered.zip", flip)
    with pytest.raises(IntegrityError, match=member):
        load_package(tampered)
    assert f"{member}: MISMATCH" in describe_package(tampered)


def test_a_missing_listed_file_is_refused(package, tmp_path):
    dropped = rewrite_zip(
        package, tmp_path / "dropped.zip", lambda name, data: None if name == ONNX_FILE else data
    )
    with pytest.raises(IntegrityError, match=f"{ONNX_FILE}: listed in rdf.yaml"):
        load_package(dropped)


@pytest.mark.parametrize(
    "entry",
    ["../escaped.txt", "/tmp/defcon-absolute.txt", "sub/../../escaped.txt", "..\\escaped.txt"],
)
def test_path_traversal_entries_are_refused(package, tmp_path, entry):
    evil = rewrite_zip(package, tmp_path / "evil.zip", extra=[(entry, b"gotcha")])
    with pytest.raises(IntegrityError, match="unsafe path"):
        load_package(evil)
    with pytest.raises(IntegrityError):
        describe_package(evil)
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_describe_package_reports_formats_checksums_and_provenance(package):
    text = describe_package(package)
    assert "DEFCoN density (tiny)" in text
    assert "checksums: all 13 files OK" in text
    assert "onnx, opset 17" in text and "tensorflow_saved_model_bundle" in text
    assert "y (min 16, step 4)" in text and "y (= input.y)" in text
    assert "source 's0'" in text and "training history: history.tsv" in text


def test_onnx_matches_keras_on_odd_and_large_frames(model, tmp_path):
    import onnxruntime

    path = export_onnx(model, tmp_path / "tiny.onnx")
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["density"]
    for shape in [(2, 36, 52, 1), (1, 512, 512, 1)]:
        frames = raw_frames(shape, seed=shape[1])
        onnx_density = session.run(None, {"input": frames})[0]
        assert onnx_density.shape == shape
        assert np.abs(onnx_density - model.predict(frames, verbose=0)).max() <= 1e-5


def test_export_refuses_bad_arguments_and_leaves_old_files_alone(model, tmp_path, monkeypatch):
    with pytest.raises(ExportError, match="multiples of 4"):
        export_bioimageio(model, tmp_path / "a.zip", test_frame=np.zeros((30, 48)))
    with pytest.raises(ExportError, match=".zip"):
        export_bioimageio(model, tmp_path / "a.onnx")
    with pytest.raises(ExportError, match="density"):
        export_bioimageio(model.with_output("seg"), tmp_path / "a.zip")
    old = tmp_path / "old.zip"
    old.write_bytes(b"previous package")

    def fail(*args, **kwargs):
        raise ValueError("simulated rejection")

    monkeypatch.setattr("defcon.package._describe", fail)
    with pytest.raises(ExportError, match="simulated rejection"):
        export_bioimageio(model, old, test_frame=raw_frames((32, 48), seed=2))
    assert old.read_bytes() == b"previous package"
    assert [p.name for p in tmp_path.iterdir()] == ["old.zip"]


def test_cli_exports_and_describes_packages_and_from_file_opens_them(
    trained, compact_file, model, tmp_path, capsys
):
    from defcon.cli import main

    zip_path, onnx_path = tmp_path / "cli.zip", tmp_path / "cli.onnx"
    assert (
        main(
            [
                "export",
                str(trained["model"]),
                "--bioimageio",
                str(zip_path),
                "--onnx",
                str(onnx_path),
                "--training-dir",
                str(trained["model"].parent),
                "--training-set",
                str(compact_file),
                "--author",
                "A. Person",
            ]
        )
        == 0
    )
    assert zip_path.exists() and onnx_path.exists()
    capsys.readouterr()
    assert main(["info", str(zip_path)]) == 0
    text = capsys.readouterr().out
    assert "onnx" in text and "A. Person" in text
    loaded = FCN.from_file(zip_path)
    frames = raw_frames((1, 32, 44, 1), seed=4)
    assert_same_predictions(loaded.predict(frames, verbose=0), model.predict(frames, verbose=0))
