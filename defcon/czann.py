"""ZEISS ZEN / arivis models: ``.czann`` export and verified reading.

A ``.czann`` file (CZANN model specification 2.1.0, written by ZEISS's
``czmodel`` package) is a zip of ``model.json`` (the metadata ZEN reads) and
``model.model`` (the network in ONNX). defcon writes a *Regression* model: a
frame in, its DEFCoN density map out; the emitter count of a region is the sum
of the map over it. The ONNX graph is :func:`defcon.package.export_onnx`'s
(opset :data:`CZANN_OPSET`), with its spatial sides fixed to the tile that
``model.json`` declares (:data:`TILE_SIZE`, batch dimension free, as czmodel's
own exports) and the description and defcon's facts in its metadata. The tile
overlap ZEN keeps (``MinOverlap``) is twice :func:`defcon.predict.receptive_margin`,
so tiled maps equal untiled ones. defcon adds ``checksums.sha256`` (the
SHA-256 of the other entries; czanns carry no checksums of their own), which
:func:`read_czann` verifies before anything else is read.
"""

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import ExportError, IntegrityError, ModelFileError, UnsupportedFileError
from .files import atomic_path, check_output, existing_file
from .frames import SIDE_MULTIPLE, padded_side

log = logging.getLogger(__name__)

METADATA_FILE, MODEL_FILE, CHECKSUM_FILE = "model.json", "model.model", "checksums.sha256"
#: The ONNX opset of czmodel 6's own exports (CZANN 2.1.0).
CZANN_OPSET = 18
#: Side of the square tiles ZEN feeds the network (a multiple of 4, above twice the margin).
TILE_SIZE = 256
#: Largest model.json or checksum list read, bytes.
MAX_TEXT_BYTES = 1 << 20


def _require(module, error):
    from .package_reader import require_module

    return require_module(module, error, needed_for=".czann files", extra="czann")


def is_czann(path):
    """Tell whether ``path`` is a zip holding ``model.json`` and ``model.model``.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
    """
    path = Path(path)
    try:
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return {METADATA_FILE, MODEL_FILE} <= set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        pass
    return False


# --------------------------------------------------------------------------- writing
def export_czann(
    model,
    path,
    *,
    name=None,
    description=None,
    pixel_size_nm=None,
    tile_size=TILE_SIZE,
    overwrite=False,
):
    """Write a density network as a ZEN regression model (``.czann``).

    Parameters
    ----------
    model : FCN or str or Path
        A density network ('both' and 'max_count' FCNs give their density
        stage), or a model file for :meth:`FCN.from_file`.
    path : str or Path
        The ``.czann`` file; written atomically, never over ``model``.
    name : str, optional
        ``ModelName`` in ``model.json`` (default: ``"DEFCoN <network name>"``).
    description : str, optional
        Stored as the ONNX model's ``doc_string`` (``model.json`` has no such field).
    pixel_size_nm : float, optional
        Pixel size of the training frames, nm: ``Scaling`` in ``model.json``
        (left out, i.e. unspecified, by default).
    tile_size : int
        Side of the square tiles ZEN feeds the network: a multiple of 4 above
        twice the receptive margin.
    overwrite : bool
        Replace an existing ``path`` that is not a ``.czann`` file.

    Returns
    -------
    Path

    Raises
    ------
    ExportError
        Not a density network, a bad ``path`` or ``tile_size``, a missing
        dependency, or a failed conversion.
    OverwriteError
        ``path`` is ``model``, or an existing file of another kind.
    BackendError
        Keras runs on another backend than TensorFlow, or TensorFlow is missing.

    Examples
    --------
    >>> export_czann("model.keras", "defcon.czann")  # doctest: +SKIP
    PosixPath('defcon.czann')
    """
    from .backends import require_tensorflow
    from .package import _density_model, export_onnx
    from .predict import receptive_margin

    require_tensorflow("the .czann export (tf2onnx)")
    onnx = _require("onnx", ExportError)
    _require("czmodel", ExportError)
    from czmodel.core.model_metadata import ModelMetadata, ModelType
    from czmodel.core.util.onnx_export import DefaultOnnxConverter

    path = Path(path)
    inputs = [model] if isinstance(model, (str, os.PathLike)) else []
    check_output(path, inputs, same_kind=is_czann, overwrite=overwrite, what=".czann export")
    if path.suffix.lower() != ".czann":
        raise ExportError(f"{path}: a ZEN model file must end in .czann")
    margin = receptive_margin()
    tile = int(tile_size)
    if tile % SIDE_MULTIPLE or tile <= 2 * margin:
        raise ExportError(
            f"tile_size {tile_size}: must be a multiple of {SIDE_MULTIPLE} above "
            f"{2 * margin} (twice the receptive margin)"
        )
    net = _density_model(model)
    name = name or f"DEFCoN {net.name}"
    metadata = ModelMetadata(
        model_type=ModelType.REGRESSION,
        input_shape=[tile, tile, 1],
        output_shape=[tile, tile, 1],
        model_name=name,
        min_overlap=[2 * margin, 2 * margin],
        scaling=None if pixel_size_nm is None else (pixel_size_nm * 1e-9,) * 2,
    )
    with tempfile.TemporaryDirectory(prefix="defcon-czann-") as tmp:
        onnx_path = export_onnx(net, Path(tmp) / "defcon.onnx", opset=CZANN_OPSET)
        proto = onnx.load(onnx_path)
        _set_sides(proto, tile)
        proto.doc_string = description or (
            "DEFCoN density network: the sum of the output map over a region is "
            "the number of fluorescent emitters in it."
        )
        facts = {
            "defcon_receptive_margin_px": str(margin),
            "defcon_side_multiple": str(SIDE_MULTIPLE),
            "defcon_input": "any intensity scale: the network min-max normalises every frame",
            "defcon_output": "density map; its sum is the emitter count",
        }
        for key, value in facts.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, onnx_path)
        with atomic_path(path) as out:
            try:
                DefaultOnnxConverter().convert(str(onnx_path), metadata, str(out))
            except ValueError as err:
                raise ExportError(f"{path}: czmodel refused the model: {err}") from err
            _add_checksums(out)
    return path


def _set_sides(proto, side):
    """Fix the y and x sides of the graph's input and output to ``side`` (batch stays free)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim in value.type.tensor_type.shape.dim[1:3]:
            dim.dim_value = side


def _add_checksums(path):
    with zipfile.ZipFile(path, "a") as archive:
        lines = [
            f"{hashlib.sha256(archive.read(info)).hexdigest()}  {info.filename}\n"
            for info in archive.infolist()
        ]
        archive.writestr(CHECKSUM_FILE, "".join(lines))


# --------------------------------------------------------------------------- reading
def read_czann(path):
    """Read a ``.czann`` file after checking it: its metadata and an onnxruntime session.

    Zip entries are checked as in packages (no unsafe or duplicate paths, links
    or zip bombs; every entry's CRC); when ``checksums.sha256`` is present
    (files defcon wrote), every entry must be listed there with its SHA-256.
    The session takes frames of any sides that are multiples of 4 (the sides
    fixed for ZEN are freed again).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    metadata : dict
        ``model.json`` as written, plus ``"defcon"``: the ONNX model's metadata
        (``description`` and defcon's facts) and ``checksums`` (``"verified"``
        or ``"absent"``).
    session : onnxruntime.InferenceSession

    Raises
    ------
    IntegrityError
        An unsafe entry, a checksum that does not match, an entry not listed.
    ModelFileError
        Not a czann, or an unreadable ``model.json`` or ONNX model.
    """
    onnx = _require("onnx", ModelFileError)
    ort = _require("onnxruntime", ModelFileError)
    metadata, model_bytes, checksums = _read_entries(path)
    try:
        proto = onnx.load_from_string(model_bytes)
        _free_sides(proto)
        session = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # onnx and onnxruntime raise assorted types
        raise ModelFileError(f"{path}: {MODEL_FILE} is not a usable ONNX model: {err}") from err
    meta = session.get_modelmeta()
    metadata["defcon"] = {
        "description": proto.doc_string,
        **dict(meta.custom_metadata_map),
        "checksums": checksums,
    }
    return metadata, session


def _read_entries(path):
    from .package_reader import _checked_entries

    path = existing_file(path, ".czann model")
    if not zipfile.is_zipfile(path):
        raise UnsupportedFileError(f"{path}: not a .czann file (not a zip)")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = _checked_entries(path, archive)
            names = {info.filename for info in infos}
            missing = {METADATA_FILE, MODEL_FILE} - names
            if missing:
                raise UnsupportedFileError(
                    f"{path}: not a .czann file (no {', '.join(sorted(missing))})"
                )
            checksums = _verify(path, archive, names)
            metadata = _parse_metadata(path, archive.getinfo(METADATA_FILE), archive)
            return metadata, archive.read(MODEL_FILE), checksums
    except zipfile.BadZipFile as err:  # e.g. an entry whose CRC does not match
        raise IntegrityError(f"{path}: damaged zip ({err}); refusing the model") from err


def _verify(path, archive, names):
    """'verified' after checking every entry against checksums.sha256, or 'absent'."""
    if CHECKSUM_FILE not in names:
        log.info("%s: no %s (not written by defcon); zip CRCs only", path, CHECKSUM_FILE)
        return "absent"
    if archive.getinfo(CHECKSUM_FILE).file_size > MAX_TEXT_BYTES:
        raise IntegrityError(f"{path}: {CHECKSUM_FILE} is too large; refusing the model")
    listed = {}
    for line in archive.read(CHECKSUM_FILE).decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for name in sorted(names - {CHECKSUM_FILE}):
        if name not in listed:
            raise IntegrityError(
                f"{path}: entry '{name}' is not listed in {CHECKSUM_FILE}; refusing the model"
            )
        if hashlib.sha256(archive.read(name)).hexdigest() != listed[name]:
            raise IntegrityError(
                f"{path}: '{name}' does not match its SHA-256 in {CHECKSUM_FILE} "
                "(modified or damaged); refusing the model"
            )
    return "verified"


def _parse_metadata(path, info, archive):
    if info.file_size > MAX_TEXT_BYTES:
        raise ModelFileError(f"{path}: {METADATA_FILE} is too large")
    try:
        metadata = json.loads(archive.read(info))
    except ValueError as err:
        raise ModelFileError(f"{path}: {METADATA_FILE} is not JSON: {err}") from err
    if not isinstance(metadata, dict) or not {"Type", "InputShape", "OutputShape"} <= set(metadata):
        raise ModelFileError(f"{path}: {METADATA_FILE} lacks Type, InputShape or OutputShape")
    return metadata


def _free_sides(proto):
    for value in list(proto.graph.input) + list(proto.graph.output):
        for dim, label in zip(value.type.tensor_type.shape.dim[1:3], ("y", "x")):
            dim.dim_param = label  # clears dim_value (a oneof)


# --------------------------------------------------------------------------- prediction
class CzannModel:
    """A ``.czann`` density network run by onnxruntime (what ``FCN.from_file`` returns).

    Supports :meth:`predict` (frames with sides multiples of 4) and
    :meth:`predict_stack` (any sides, padded as defcon pads); not training,
    ``count_tiff``/``defcon predict`` (they compile an FCN's weights) or exports.

    Parameters
    ----------
    path : str or Path
        The ``.czann`` file, checked by :func:`read_czann`.
    """

    output_kind = "density"

    def __init__(self, path):
        self.path = Path(path)
        self.metadata, self.session = read_czann(path)
        self.name = self.metadata.get("ModelName") or self.path.stem
        self._input = self.session.get_inputs()[0].name

    @property
    def border_size(self):
        """Border (half the ``MinOverlap``) ZEN keeps around each tile, pixels."""
        overlap = self.metadata.get("MinOverlap") or [0]
        return overlap[0] // 2

    def predict(self, frames, batch_size=8):
        """Density maps of float32 ``(N, H, W, 1)`` frames, H and W multiples of 4.

        Parameters
        ----------
        frames : array_like
        batch_size : int

        Returns
        -------
        ndarray of shape (N, H, W, 1), float32
        """
        frames = np.asarray(frames, np.float32)
        parts = [
            self.session.run(None, {self._input: frames[a : a + batch_size]})[0]
            for a in range(0, len(frames), batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def predict_stack(self, stack, batch_size=8):
        """Density maps of frames of any size, as :meth:`FCN.predict_stack`.

        Frames are padded at the bottom and right to multiples of 4 by repeating
        the last row and column; the maps are cropped back.

        Parameters
        ----------
        stack : array_like of shape (H, W), (N, H, W) or (N, H, W, 1)
        batch_size : int

        Returns
        -------
        ndarray of shape (N, H, W, 1), float32
        """
        from .predict import _as_frames, _pad

        frames = _as_frames(stack)
        h, w = frames.shape[1:]
        padded = _pad(frames.astype(np.float32, copy=False), padded_side(h), padded_side(w))
        return self.predict(padded, batch_size)[:, :h, :w]


def describe_czann(path):
    """Text summary of a ``.czann`` file for ``defcon info`` (after checking it).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
    """
    metadata, session = read_czann(path)
    facts = metadata["defcon"]
    overlap = metadata.get("MinOverlap")
    scaling = metadata.get("Scaling")
    inputs = session.get_inputs()[0]
    lines = [
        f"{Path(path)}: ZEN model (.czann {metadata.get('FormatVersion', '?')}), "
        f"{metadata['Type']} '{metadata.get('ModelName', '')}'",
        f"  id: {metadata.get('Id', '?')}",
        f"  tile: input {metadata['InputShape']}, output {metadata['OutputShape']} (y, x, c)",
        f"  border size: {overlap[0] // 2} px (MinOverlap {overlap})"
        if overlap
        else "  border size: not given",
        "  scaling: "
        + (" x ".join(f"{s * 1e9:g} nm" for s in scaling) if scaling else "unspecified"),
        f"  ONNX input: {inputs.name} {inputs.shape} {inputs.type}",
        f"  checksums: {facts['checksums']}",
    ]
    if facts.get("description"):
        lines.append(f"  description: {facts['description']}")
    lines += [f"  {key}: {value}" for key, value in facts.items() if key.startswith("defcon_")]
    return "\n".join(lines)
