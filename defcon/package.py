"""One file to share a model: bioimage.io package and ONNX export, verified loading.

A package (bioimage.io model spec 0.5) is a zip of ``rdf.yaml`` and every file
it names, each with its SHA-256: ``weights.onnx`` (opset 17) and
``tf_saved_model.zip`` (TF2 SavedModel) weights, ``defcon_model.keras`` (the
Keras model, what defcon loads), test tensors ``(1, 64, 48, 1)`` from a
simulated frame, sample TIFFs, ``cover.png``, ``README.md`` and, when given,
the training config, ``history.tsv``, ``curves.png`` and
``training_provenance.json``. The Keras file is an attachment, not a
``keras_v3`` weights entry: it needs defcon's registered layers, and bioimage.io
tools test every weights entry in an environment without defcon.
"""

import csv
import datetime
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import tifffile

from .backends import require_tensorflow
from .errors import ExportError, MissingFileError, ModelKindError, UnsupportedFileError
from .files import atomic_path, existing_file, sha256_file
from .frames import SIDE_MULTIPLE

# Reading lives in package_reader; these names are part of this module's API too.
from .package_reader import (
    KERAS_FILE,
    PROVENANCE_FILE,
    require_module,
)
from .package_reader import describe_package as describe_package
from .package_reader import is_package as is_package
from .package_reader import load_package as load_package

log = logging.getLogger(__name__)

ONNX_OPSET = 17
INPUT_ID, OUTPUT_ID = "input", "density"
#: Smallest frame side and side step declared in packages (the network needs multiples of 4).
SIZE_MIN, SIZE_STEP = 16, SIDE_MULTIPLE
TEST_SHAPE = (64, 48)
ONNX_FILE, TF_FILE = "weights.onnx", "tf_saved_model.zip"
CITATION = {
    "text": "Ottino B., Douglass K. M., Manley S. DEFCoN: density estimation by fully "
    "convolutional networks, a fluorescent spot counter for single-molecule "
    "localization microscopy. Laboratory of Experimental Biophysics, EPFL.",
    "url": "https://github.com/LEB-EPFL/DEFCoN",
}
TAGS = [
    "defcon",
    "density-estimation",
    "counting",
    "smlm",
    "single-molecule-localization",
    "fluorescence-light-microscopy",
    "2d",
    "fully-convolutional-network",
    "tensorflow",
    "onnx",
]
DESCRIPTION = (
    "DEFCoN density network: counts fluorescent emitters in SMLM frames. The sum of "
    "the output density map over a region is the number of emitters in it."
)


def _density_model(model):
    from .networks import FCN

    if isinstance(model, (str, os.PathLike)):
        model = FCN.from_file(model)
    kind = getattr(model, "output_kind", None)
    if kind in ("both", "max_count"):
        return model.with_output("density")
    if kind != "density":
        raise ModelKindError(f"only DEFCoN density networks can be packaged, not {kind or model!r}")
    return model


def export_onnx(model, path, opset=ONNX_OPSET):
    """Write a density network as an ONNX model.

    Input ``input``: float32 ``(batch, y, x, 1)``, raw pixel values (the network
    normalises every frame; y and x multiples of 4). Output ``density``: float32
    ``(batch, y, x, 1)``. Converted by ``tf2onnx.convert.from_function`` from a
    ``tf.function`` calling the model; written atomically.

    Parameters
    ----------
    model : FCN or str or Path
        A density network ('both' and 'max_count' FCNs give their density
        stage), or a model file for :meth:`FCN.from_file`.
    path : str or Path
        The ``.onnx`` file.
    opset : int
        ONNX opset version.

    Returns
    -------
    Path

    Raises
    ------
    ExportError
        Not a density network, a missing dependency, or a failed conversion.
    BackendError
        Keras runs on another backend than TensorFlow, or TensorFlow is missing.

    Examples
    --------
    >>> export_onnx("model.keras", "defcon.onnx")  # doctest: +SKIP
    PosixPath('defcon.onnx')
    """
    tf = require_tensorflow("the ONNX export (tf2onnx)")
    tf2onnx = require_module("tf2onnx", ExportError)
    model = _density_model(model)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32, name=INPUT_ID)])
    def density(frames):
        return {OUTPUT_ID: model(frames, training=False)}

    try:
        proto, _ = tf2onnx.convert.from_function(
            density, input_signature=density.input_signature, opset=int(opset)
        )
    except Exception as err:  # tf2onnx raises assorted exception types
        raise ExportError(f"ONNX conversion (opset {opset}) failed: {err}") from err
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim, label in zip(value.type.tensor_type.shape.dim, ("batch", "y", "x")):
            if not dim.dim_value:
                dim.dim_param = label
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return path


def export_bioimageio(
    model,
    path,
    *,
    name=None,
    description=None,
    authors=None,
    training_dir=None,
    training_set=None,
    test_frame=None,
    validation=None,
    tags=None,
    version=None,
):
    """Write a bioimage.io model package (spec 0.5 zip) for a density network.

    Built and validated with ``bioimageio.spec`` (see the module docstring for
    its contents); every file carries its SHA-256; written atomically.

    Parameters
    ----------
    model : FCN or str or Path
        A density network, or a model file for :meth:`FCN.from_file`.
    path : str or Path
        The ``.zip`` file to write.
    name : str, optional
        Model name (letters, digits, spaces, ``_+-()``); default from the model's name.
    description : str, optional
        One-paragraph description.
    authors : list of str or dict, optional
        Who trained the model: names, or dicts with ``name`` and optionally
        ``affiliation``, ``email``, ``orcid``, ``github_user`` (checked online).
    training_dir : str or Path, optional
        A training OutputDir: its ``.ini`` copy, ``history.tsv`` and
        ``curves.png`` are attached.
    training_set : str or Path, optional
        The compact set or TrainingSet trained on: its SHA-256 and its sources
        (files and SHA-256) go into ``training_provenance.json``.
    test_frame : ndarray of shape (H, W), optional
        Raw frame for the test tensors, sides multiples of 4 and at least 16
        (default: a simulated 64 x 48 frame).
    validation : str or dict, optional
        Counting figures for the ``# Validation`` section: Markdown, or a
        mapping from figure name to value.
    tags : list of str, optional
        Extra tags.
    version : str, optional
        Version of the model.

    Returns
    -------
    Path

    Raises
    ------
    ExportError
        Not a density network, a bad argument, missing optional dependencies,
        or bioimageio.spec rejects the package.
    BackendError
        Keras runs on another backend than TensorFlow, or TensorFlow is missing.
    MissingFileError
        ``training_dir`` or ``training_set`` does not exist.

    Examples
    --------
    >>> export_bioimageio(  # doctest: +SKIP
    ...     "out/quickstart.keras", "quickstart.zip", authors=["A. Person"], training_dir="out/")
    PosixPath('quickstart.zip')
    """
    require_tensorflow("the bioimage.io export (ONNX and SavedModel weights)")
    spec = require_module("bioimageio.spec", ExportError)
    _check_pydantic()
    model = _density_model(model)
    path = Path(path)
    if path.suffix.lower() != ".zip":
        raise ExportError(f"{path}: a bioimage.io package is a .zip file")
    frame, true_count = _test_frame(test_frame)
    prediction = np.asarray(model.predict(frame, verbose=0), dtype=np.float32)
    training = _training_files(training_dir, training_set, model.name)
    name = name or "DEFCoN density ({})".format(
        re.sub(r"[^A-Za-z0-9_+\- ()]", "_", model.name)[:40]
    )
    with tempfile.TemporaryDirectory(prefix="defcon-package-") as tmp:
        tmp = Path(tmp)
        files = {
            key: tmp / file_name
            for key, file_name in (
                ("keras", KERAS_FILE),
                ("onnx", ONNX_FILE),
                ("tf", TF_FILE),
                ("test_input", "test_input.npy"),
                ("test_output", "test_output.npy"),
                ("sample_input", "sample_input.tif"),
                ("sample_output", "sample_output.tif"),
                ("cover", "cover.png"),
                ("doc", "README.md"),
            )
        }
        clean = type(model).from_config(model.get_config())  # without optimizer state
        clean.set_weights(model.get_weights())
        clean.save(files["keras"])
        export_onnx(model, files["onnx"])
        _saved_model_zip(model, files["tf"], tmp)
        np.save(files["test_input"], frame)
        np.save(files["test_output"], prediction)
        tifffile.imwrite(files["sample_input"], frame[0, ..., 0])
        tifffile.imwrite(files["sample_output"], prediction[0, ..., 0])
        _cover(frame, prediction, files["cover"])
        attachments = [files["keras"]] + [
            Path(shutil.copy(training[key], tmp))
            for key in ("config", "history", "curves")
            if key in training
        ]
        provenance = None
        if "training_set" in training:
            provenance = _training_set_provenance(training["training_set"])
            attachments.append(tmp / PROVENANCE_FILE)
            attachments[-1].write_text(json.dumps(provenance, indent=2), encoding="utf-8")
        files["doc"].write_text(
            _documentation(
                name, description, prediction, true_count, training, provenance, validation
            ),
            "utf-8",
        )
        try:
            descr = _describe(
                name,
                description,
                authors,
                tags,
                version,
                files,
                attachments,
                _defcon_config(training, provenance),
            )
        except Exception as err:  # pydantic's ValidationError, or httpx for github_user
            raise ExportError(f"{path}: bioimageio.spec rejects the description: {err}") from err
        with atomic_path(path) as out:
            spec.save_bioimageio_package(descr, output_path=out)
            summary = spec.load_description(out, perform_io_checks=True).validation_summary
            if summary.status not in ("valid-format", "passed"):
                raise ExportError(
                    f"{path}: the package does not validate: "
                    + "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in summary.errors)
                )
    log.info("wrote the bioimage.io package %s", path)
    return path


def _check_pydantic():
    pydantic, spec = (
        require_module("pydantic", ExportError),
        require_module("bioimageio.spec", ExportError),
    )
    if spec.__version__.startswith("0.5.12") and tuple(
        int(p) for p in re.findall(r"\d+", pydantic.VERSION)[:2]
    ) >= (2, 12):
        raise ExportError(
            f"bioimageio.spec {spec.__version__} cannot build model descriptions "
            f"with pydantic {pydantic.VERSION}: pip install 'pydantic<2.12'"
        )


def _test_frame(frame):
    if frame is None:
        from .simulate import simulate_stack

        stack, truth = simulate_stack(10, *TEST_SHAPE, seed=7, density_sweep=(0.5, 0.5))
        last = truth[truth["frame"] == len(stack)]
        return stack[-1][None, ..., None].astype(np.float32), int((last["brightness"] > 250).sum())
    frame = np.asarray(frame)
    squeezed = np.squeeze(frame)
    if squeezed.ndim != 2 or not np.issubdtype(frame.dtype, np.number):
        raise ExportError(
            f"test_frame must be one frame (H, W) of numbers, not an array of "
            f"shape {frame.shape} and type {frame.dtype}"
        )
    if any(side < SIZE_MIN or side % SIZE_STEP for side in squeezed.shape):
        raise ExportError(
            f"test_frame sides must be multiples of {SIZE_STEP} and at least "
            f"{SIZE_MIN}, not {squeezed.shape}"
        )
    return squeezed[None, ..., None].astype(np.float32), None


def _saved_model_zip(model, zip_path, tmp):
    from .export import save_tf2_model

    folder = save_tf2_model(model, tmp / "saved_model")
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(item, item.relative_to(folder).as_posix())
    shutil.rmtree(folder)


def _cover(frame, density, path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4), dpi=100)
    left, right = figure.subplots(1, 2)
    left.imshow(frame[0, ..., 0], cmap="gray")
    left.set_title("input frame (raw pixel values)")
    figure.colorbar(right.imshow(density[0, ..., 0], cmap="magma"), ax=right, fraction=0.05)
    right.set_title(f"density map: {density.sum():.1f} emitters")
    for axes in (left, right):
        axes.set_axis_off()
    figure.savefig(path, format="png")


# --------------------------------------------------------------------------- training records
def _training_files(training_dir, training_set, model_name):
    found = {}
    if training_dir is not None:
        folder = existing_file(training_dir, "training output folder")
        if not folder.is_dir():
            raise UnsupportedFileError(f"{folder}: not a folder (expected a training OutputDir)")
        configs = sorted(folder.glob("*.ini"))
        if configs:
            found["config"] = next((c for c in configs if c.stem == model_name), configs[0])
        for key, file_name in (("history", "history.tsv"), ("curves", "curves.png")):
            if (folder / file_name).is_file():
                found[key] = folder / file_name
        if not found:
            raise MissingFileError(f"{folder}: no training config (.ini) or history.tsv found")
    if training_set is not None:
        found["training_set"] = existing_file(training_set, "training set")
    return found


def _plain(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value if isinstance(value, (str, int, float, bool, list)) else str(value)


def _training_set_provenance(path, follow=True):
    import h5py

    path = Path(path)
    if not h5py.is_hdf5(path):
        raise UnsupportedFileError(f"{path}: not an HDF5 training set")
    record = {
        "file": str(path.resolve()),
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "datasets": [],
    }
    with h5py.File(path, "r") as f:
        record["attributes"] = {key: _plain(value) for key, value in f.attrs.items()}
        group = f.get("input")
        for data_name, data in group.items() if isinstance(group, h5py.Group) else ():
            if isinstance(data, h5py.Dataset):
                record["datasets"].append(
                    {
                        "name": data_name,
                        "frames": int(data.shape[0]),
                        "frame_shape": [int(s) for s in data.shape[1:3]],
                        **{k: _plain(v) for k, v in data.attrs.items()},
                    }
                )
    parent = record["attributes"].get("source_file")  # a compact set's TrainingSet
    if follow and isinstance(parent, str) and Path(parent).is_file() and h5py.is_hdf5(parent):
        record["built_from"] = _training_set_provenance(parent, follow=False)
    return record


def _sources(provenance):
    """[(dataset, source file, sha256)] of the original sources in a provenance record."""
    return [
        (d["name"], d["source_file"], d.get("source_sha256", "?"))
        for record in (provenance, (provenance or {}).get("built_from"))
        for d in (record or {}).get("datasets", ())
        if d.get("source_file")
    ]


def _best_count_mae(history):
    try:
        with open(history, newline="", encoding="utf-8") as f:
            values = [
                float(row["val_count_mae"])
                for row in csv.DictReader(f, delimiter="\t")
                if row.get("stage") == "density" and row.get("val_count_mae")
            ]
    except (OSError, ValueError, KeyError):
        return None
    return min(values) if values else None


def _defcon_config(training, provenance):
    from . import __version__

    config = {
        "version": __version__,
        "keras_file": KERAS_FILE,
        "output": "density",
        "side_multiple": SIZE_STEP,
        "normalisation": "per-frame min-max inside the network",
    }
    record = {key: training[key].name for key in ("config", "history", "curves") if key in training}
    if provenance is not None:
        record["training_set"] = {"file": provenance["file"], "sha256": provenance["sha256"]}
        record["sources"] = [
            {"dataset": n, "file": f, "sha256": s} for n, f, s in _sources(provenance)
        ]
    if record:
        config["training"] = record
    return config


# --------------------------------------------------------------------------- description
_DOC = """# {name}

{description}

## What it counts

A DEFCoN network (density estimation by fully convolutional networks; Ottino, Douglass,
Manley) for single-molecule localization microscopy (SMLM). It maps a frame to a density
map of the same size whose sum over any region is the number of fluorescent emitters in it.

## Input and output

- `input`: float32 (batch, y, x, channel), one channel of **raw pixel values**: min-max
  normalisation is inside the network, so do not normalise. y, x: multiples of {step},
  at least {min}.
- `density`: float32, the same shape; its sum is the count.
- Give whole frames: each frame is normalised by its own minimum and maximum, so tiles
  processed separately do not give the same map as the whole frame.

## Training data

{training}

## Use in Fiji (deepImageJ)

Install deepImageJ (Fiji update site *DeepImageJ*); *Plugins > DeepImageJ > DeepImageJ
Install Model* with this zip; open a stack and *DeepImageJ Run* this model (TensorFlow or
ONNX engine, one tile as large as the image). A frame's count is the sum of its density
map: *Analyze > Measure* with *Integrated density* (RawIntDen).

## Use in Python

```python
from defcon.package import load_package

model = load_package("model.zip")       # checks every SHA-256 first
counts = model.predict_stack(frames).sum(axis=(1, 2, 3))   # frames: (T, H, W, 1)
```

Without defcon: `onnxruntime.InferenceSession(zipfile.ZipFile("model.zip").read("{onnx}"))`
`.run(None, {{"{input}": frames}})[0]` (frames float32, H and W multiples of {step}).

# Validation

{validation}
"""


def _documentation(name, description, prediction, true_count, training, provenance, validation):
    if provenance is not None:
        text = [
            f"Training set `{Path(provenance['file']).name}` (SHA-256 "
            f"`{provenance['sha256']}`), built from:"
        ]
        text += [f"- `{n}`: `{f}` (SHA-256 `{s}`)" for n, f, s in _sources(provenance)]
        text.append(f"\nFull record: `{PROVENANCE_FILE}` (attached).")
    else:
        text = ["Not recorded in this package."]
    if training.keys() & {"config", "history", "curves"}:
        text.append(
            "\nAttached: "
            + ", ".join(
                f"`{training[k].name}`" for k in ("config", "history", "curves") if k in training
            )
        )
    if isinstance(validation, dict):
        figures = ["| figure | value |", "| --- | --- |"] + [
            f"| {k} | {f'{v:.4g}' if isinstance(v, float) else v} |" for k, v in validation.items()
        ]
    else:
        figures = [
            str(validation).strip()
            if validation
            else "No counting figures were given when this package was made."
        ]
    mae = _best_count_mae(training["history"]) if "history" in training else None
    if mae is not None:
        figures.append(
            f"\nBest validation count MAE during training (held-out split of the "
            f"training set, `history.tsv`): {mae:.4g} emitters per frame."
        )
    truth = f"; ground truth {true_count} emitters" if true_count is not None else ""
    figures.append(
        f"\nPackaged test frame ({prediction.shape[1]} x {prediction.shape[2]}"
        f"{', simulated' if true_count is not None else ''}{truth}): predicted "
        f"count {prediction.sum():.2f}."
    )
    return _DOC.format(
        name=name,
        description=description or DESCRIPTION,
        step=SIZE_STEP,
        min=SIZE_MIN,
        training="\n".join(text),
        onnx=ONNX_FILE,
        input=INPUT_ID,
        validation="\n".join(figures),
    )


def _describe(name, description, authors, tags, version, files, attachments, defcon_config):
    import tensorflow as tf
    from bioimageio.spec.model import v0_5 as v

    def file_descr(file):
        return dict(source=file, sha256=v.Sha256(sha256_file(file)))

    def axes(kind, space):
        return [
            v.BatchAxis(),
            *(space(id=v.AxisId(a)) for a in ("y", "x")),
            v.ChannelAxis(channel_names=[v.Identifier(kind)]),
        ]

    sized = v.ParameterizedSize(min=SIZE_MIN, step=SIZE_STEP)
    inputs = [
        v.InputTensorDescr(
            id=v.TensorId(INPUT_ID),
            axes=axes("raw", lambda id: v.SpaceInputAxis(id=id, size=sized)),
            test_tensor=v.FileDescr(**file_descr(files["test_input"])),
            sample_tensor=v.FileDescr(**file_descr(files["sample_input"])),
            description="Raw pixel values; min-max normalisation is inside the network, so give "
            "raw frames. y, x: multiples of 4.",
            data=v.IntervalOrRatioDataDescr(type="float32"),
        )
    ]
    outputs = [
        v.OutputTensorDescr(
            id=v.TensorId(OUTPUT_ID),
            axes=axes(
                "density",
                lambda id: v.SpaceOutputAxis(
                    id=id, size=v.SizeReference(tensor_id=v.TensorId(INPUT_ID), axis_id=id)
                ),
            ),
            test_tensor=v.FileDescr(**file_descr(files["test_output"])),
            sample_tensor=v.FileDescr(**file_descr(files["sample_output"])),
            description="Density map; its sum over a region is the number of emitters in it.",
            data=v.IntervalOrRatioDataDescr(type="float32"),
        )
    ]
    converted = f"converted by defcon {defcon_config['version']} from the Keras model {KERAS_FILE}"
    weights = v.WeightsDescr(
        tensorflow_saved_model_bundle=v.TensorflowSavedModelBundleWeightsDescr(
            **file_descr(files["tf"]),
            tensorflow_version=v.Version(tf.__version__),
            comment=f"TF2 SavedModel {converted}; serving_default returns {{'density': ...}}",
        ),
        onnx=v.OnnxWeightsDescr(
            **file_descr(files["onnx"]),
            opset_version=ONNX_OPSET,
            parent="tensorflow_saved_model_bundle",
            comment=f"tf2onnx, {converted}",
        ),
    )
    if not authors:
        log.warning("no authors given for the package; pass authors=[...]")
    return v.ModelDescr(
        name=name,
        description=description or DESCRIPTION,
        authors=[
            v.Author(**({"name": a} if isinstance(a, str) else a))
            for a in authors or ["Unknown (no authors given at export)"]
        ],
        cite=[v.CiteEntry(**CITATION)],
        license=v.LicenseId("BSD-3-Clause"),
        tags=TAGS + [t for t in tags or () if t not in TAGS],
        documentation=v.FileDescr(**file_descr(files["doc"])),
        covers=[v.FileDescr(**file_descr(files["cover"]))],
        attachments=[v.FileDescr(**file_descr(a)) for a in attachments],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config={"defcon": defcon_config},
        timestamp=datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0),
        **({"version": v.Version(str(version))} if version is not None else {}),
    )
