"""Export DEFCoN networks for other runtimes: Fiji / TensorFlow 1.x and TensorFlow 2.

The TensorFlow 1.x export (:func:`save_tf1_model`) is what the DEFCoN-ImageJ
plugin and defcon's own Java API load with TensorFlow Java 1.6 to 1.15::

    SavedModelBundle.load(dir, "serve")
    feed "input_tensor"   float32 [1, h, w, 1], raw pixel values, h and w multiples of 4
    fetch "output_tensor" float32 [1, h, w, 1] density ([1, 1] for a max-count model)

Keras 3 and ``tf.saved_model.save`` write graphs of StatefulPartitionedCall ops
and resource variables that TensorFlow 1.x runtimes reject. So the network is
rebuilt here from its layer weights as a ``tf.compat.v1`` graph of plain ops
(Conv2D, Conv2DBackpropInput, BiasAdd, Relu, Sigmoid, Min, Max, Sub, Mul, Add,
Floor, RealDiv, Shape, StridedSlice, Pack, Identity, and AvgPool for max count),
with the weights as constants: only op types that the reference DEFCoN-ImageJ
model uses (plus AvgPool, which DEFCoN's own max-count model uses).

Every export is written atomically: to a temporary folder beside the target,
moved into place when complete. A failed export leaves nothing that looks
finished, and an existing export is only replaced by a complete new one.
"""

import contextlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from .backends import require_tensorflow
from .errors import ExportError, MissingFileError, ModelKindError, UnsupportedFileError

log = logging.getLogger(__name__)

#: Tensor names of the TensorFlow 1.x export (those DEFCoN-ImageJ feeds and fetches).
INPUT_NAME = "input_tensor"
OUTPUT_NAME = "output_tensor"
#: The SavedModel tag TensorFlow Java loads.
SERVE_TAG = "serve"
#: Model kinds that can be exported, and the output key of each in signatures.
EXPORTABLE_KINDS = {"density": "density", "max_count": "max_count"}
#: Names inside the Fiji folder written by :func:`export_fiji`.
FIJI_FOLDER = "DEFCoN"
FIJI_DENSITY = "tf_density_count"
FIJI_MAX_COUNT = "tf_max_count"
FIJI_README = "README.txt"

# Any positive float32 times 2**127 is at least 2**-22 (the smallest subnormal is
# 2**-149), so floor(1 / (1 + span * 2**127)) is 1 when span == 0 and 0 otherwise
# (1 + 2**-22 is representable, 1 / (1 + x) < 1 for every such x, and
# 1 / inf == 0). Without the scale, spans below about 6e-8 would round 1 + span
# to 1 and be taken for flat frames.
_FLAT_SCALE = 2.0**127


# --------------------------------------------------------------------------- the network
def _activation_name(layer):
    name = layer.get_config().get("activation", "linear")
    if isinstance(name, dict):  # a serialised activation object
        name = name.get("config", {}).get("name", name.get("class_name"))
    return str(name).lower()


def _network_spec(model):
    """Read an FCN's layers into a list of plain steps.

    Returns
    -------
    kind : {'density', 'max_count'}
    steps : list of tuples
        ('hist_norm',), ('conv', name, kernel, bias, stride, activation),
        ('deconv', name, kernel, bias, stride, activation),
        ('box_max', name, pool, strides).
    """
    from keras import layers as klayers

    from .models import HistNorm, MaxLocalCount

    kind = getattr(model, "output_kind", None)
    if kind is None:
        raise ExportError(
            f"cannot export a {type(model).__name__}: expected a defcon FCN "
            "(defcon.FCN or FCN.from_file)"
        )
    if kind not in EXPORTABLE_KINDS:
        hints = {
            "both": " (use model.with_output('density'))",
            "seg": " (a segmentation network gives probabilities, not counts: load or "
            "train the density stage)",
        }
        raise ModelKindError(
            f"model '{model.name}' outputs '{kind}'; only 'density' and "
            f"'max_count' networks can be exported{hints.get(kind, '')}"
        )
    # An FCN is a chain of layers (defcon.models.defcon_graph): model.layers is
    # in graph order.
    steps = []
    for layer in model.layers:
        if isinstance(layer, klayers.InputLayer):
            continue
        if isinstance(layer, HistNorm):
            steps.append(("hist_norm",))
        elif isinstance(layer, klayers.Dropout):
            continue  # identity at inference
        elif isinstance(layer, (klayers.Conv2D, klayers.Conv2DTranspose)):
            deconv = isinstance(layer, klayers.Conv2DTranspose)
            config = layer.get_config()
            activation = _activation_name(layer)
            problems = []
            if config.get("padding") != "same":
                problems.append(f"padding {config.get('padding')!r} (expected 'same')")
            if config.get("data_format", "channels_last") != "channels_last":
                problems.append("data_format (expected channels_last)")
            if tuple(config.get("dilation_rate", (1, 1))) != (1, 1):
                problems.append("dilation_rate (expected 1)")
            if deconv and config.get("output_padding") is not None:
                problems.append("output_padding (expected None)")
            if tuple(config.get("strides", (1, 1)))[0] != tuple(config.get("strides", (1, 1)))[1]:
                problems.append("unequal strides")
            if activation not in ("relu", "sigmoid", "linear"):
                problems.append(f"activation {activation!r}")
            if problems:
                raise ExportError(
                    f"model '{model.name}': layer '{layer.name}' cannot be "
                    f"exported: {', '.join(problems)}"
                )
            weights = [w.astype("float32") for w in layer.get_weights()]
            bias = weights[1] if len(weights) == 2 else None
            stride = int(tuple(config["strides"])[0])
            steps.append(
                ("deconv" if deconv else "conv", layer.name, weights[0], bias, stride, activation)
            )
        elif isinstance(layer, MaxLocalCount):
            steps.append(("box_max", layer.name, tuple(layer.pool_size), tuple(layer.strides)))
        else:
            raise ExportError(
                f"model '{model.name}': layer '{layer.name}' of type "
                f"{type(layer).__name__} cannot be exported"
            )
    return kind, steps


def _forward(x, steps, division=None):
    """Build the network's ops on ``x`` with TensorFlow raw ops.

    Raw ops fix the op types (``x + y`` would make AddV2, which TensorFlow 1.x
    lacks). Works in a ``tf.compat.v1`` graph and inside a ``tf.function``.
    """
    import numpy as np
    import tensorflow as tf

    raw = tf.raw_ops

    def const(value, name):
        return tf.constant(np.asarray(value, dtype="float32"), name=name)

    for step in steps:
        if step[0] == "hist_norm":
            with tf.name_scope("hist_norm"):
                axes = tf.constant([1, 2, 3], dtype=tf.int32, name="axes")
                lo = raw.Min(input=x, axis=axes, keep_dims=True, name="min")
                hi = raw.Max(input=x, axis=axes, keep_dims=True, name="max")
                span = raw.Sub(x=hi, y=lo, name="span")
                # flat = 1 exactly when span == 0 (see _FLAT_SCALE), so the
                # denominator is span, or 1 for a flat frame, whose numerator is 0.
                scaled = raw.Mul(x=span, y=const(_FLAT_SCALE, "scale"), name="scaled")
                one = const(1.0, "one")
                flat = raw.Floor(x=raw.RealDiv(x=one, y=raw.Add(x=one, y=scaled)), name="flat")
                denominator = raw.Add(x=span, y=flat, name="denominator")
                x = raw.RealDiv(x=raw.Sub(x=x, y=lo), y=denominator, name="normalised")
        elif step[0] in ("conv", "deconv"):
            kind, name, kernel, bias, stride, activation = step
            with tf.name_scope(name):
                strides = [1, stride, stride, 1]
                weights = const(kernel, "kernel")
                if kind == "conv":
                    x = raw.Conv2D(input=x, filter=weights, strides=strides, padding="SAME")
                else:
                    # Output size (batch, stride * H, stride * W, filters), from
                    # the input's dynamic shape: any frame size works.
                    shape = raw.Shape(input=x, out_type=tf.int32)

                    def dim(i, shape=shape):
                        return raw.StridedSlice(
                            input=shape,
                            begin=tf.constant([i], tf.int32),
                            end=tf.constant([i + 1], tf.int32),
                            strides=tf.constant([1], tf.int32),
                            shrink_axis_mask=1,
                        )

                    factor = tf.constant(stride, tf.int32, name="stride")
                    size = raw.Pack(
                        values=[
                            dim(0),
                            raw.Mul(x=dim(1), y=factor),
                            raw.Mul(x=dim(2), y=factor),
                            tf.constant(int(kernel.shape[2]), tf.int32, name="filters"),
                        ],
                        axis=0,
                        name="output_size",
                    )
                    x = raw.Conv2DBackpropInput(
                        input_sizes=size,
                        filter=weights,
                        out_backprop=x,
                        strides=strides,
                        padding="SAME",
                    )
                if bias is not None:
                    x = raw.BiasAdd(value=x, bias=const(bias, "bias"))
                if activation == "relu":
                    x = raw.Relu(features=x)
                elif activation == "sigmoid":
                    x = raw.Sigmoid(x=x)
        elif step[0] == "box_max":
            _, name, pool, strides = step
            with tf.name_scope(name):
                mean = raw.AvgPool(
                    value=x,
                    ksize=[1, pool[0], pool[1], 1],
                    strides=[1, strides[0], strides[1], 1],
                    padding="VALID",
                )
                total = raw.Mul(x=mean, y=const(float(pool[0] * pool[1]), "area"))
                x = raw.Max(input=total, axis=tf.constant([1, 2], tf.int32), keep_dims=False)
    if division is not None:
        x = raw.RealDiv(x=x, y=const(division, "division"), name="divide")
    return x


def _check_division(division):
    if division is None:
        return None
    try:
        value = float(division)
    except (TypeError, ValueError):
        raise ExportError(f"division must be a number, not {division!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ExportError(f"division must be a positive finite number, not {division!r}")
    return value


# --------------------------------------------------------------------------- atomic folders
def _is_replaceable(path, allowed_names):
    """True if ``path`` may be replaced: an empty folder, or one of our exports."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or names <= set(allowed_names)


@contextlib.contextmanager
def _staged_folder(target, allowed_names):
    """Yield a path to write a folder at; move it to ``target`` when done.

    ``target`` may already exist if it is empty or holds only ``allowed_names``
    (a previous export); it is then swapped for the new folder, and restored if
    the swap fails. On any error the partial folder is removed.
    """
    target = Path(target)
    if target.exists() or target.is_symlink():
        if not _is_replaceable(target, allowed_names):
            raise UnsupportedFileError(
                f"{target}: exists and is not an export defcon may replace (expected an empty "
                f"folder or one holding only {', '.join(sorted(allowed_names))}); choose a new "
                "name or remove it"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        new = staging / target.name
        yield new
        if not new.is_dir():
            raise ExportError(f"{target}: the export wrote nothing")
        if target.exists():
            old = staging / (target.name + ".old")
            os.replace(target, old)
            try:
                os.replace(new, target)
            except BaseException:
                os.replace(old, target)
                raise
        else:
            os.replace(new, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


_SAVED_MODEL_NAMES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


# --------------------------------------------------------------------------- exports
def save_tf1_model(model, export_dir, division=None):
    """Save a SavedModel that TensorFlow 1.x runtimes (TensorFlow Java 1.6+) load.

    The graph holds only plain ops with the weights as constants, a placeholder
    ``input_tensor`` (float32, shape ``(None, None, None, 1)``, raw pixel values:
    the network normalises each frame itself) and an identity ``output_tensor``:
    the density map ``(batch, H, W, 1)``, or for a max-count model the maximum
    local count ``(batch, 1)``. Saved with tag ``serve`` and a ``serving_default``
    signature (``input_tensor`` -> ``density`` or ``max_count``), default
    attributes stripped, as DEFCoN-ImageJ expects.

    Parameters
    ----------
    model : FCN
        A network whose ``output_kind`` is 'density' or 'max_count'.
    export_dir : str or Path
        The SavedModel folder to create. An existing SavedModel folder (or an
        empty folder) is replaced atomically; any other existing path is an error.
    division : float, optional
        Divide the output by this (as DEFCoN's ``save_tf_model``), e.g. to undo
        a scaling of the training targets.

    Returns
    -------
    Path
        ``export_dir``.

    Raises
    ------
    ExportError
        The model is not a density or max-count FCN, or ``division`` is not a
        positive number.
    UnsupportedFileError
        ``export_dir`` exists and is not a SavedModel folder.
    BackendError
        Keras runs on another backend than TensorFlow, or TensorFlow is missing.

    Examples
    --------
    >>> model = FCN.from_file("defcon_tf13.h5")  # doctest: +SKIP
    >>> save_tf1_model(model, "Fiji.app/plugins/DEFCoN/tf_density_count")  # doctest: +SKIP
    """
    tf = require_tensorflow("the TF1 SavedModel export (Fiji, FCN.save_tf_model)")

    kind, steps = _network_spec(model)
    division = _check_division(division)
    export_dir = Path(export_dir)
    with _staged_folder(export_dir, _SAVED_MODEL_NAMES) as tmp:
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, (None, None, None, 1), name=INPUT_NAME)
            y = tf.identity(_forward(x, steps, division), name=OUTPUT_NAME)
            signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: x}, outputs={EXPORTABLE_KINDS[kind]: y}
            )
            with tf.compat.v1.Session(graph=graph) as session:
                builder = tf.compat.v1.saved_model.Builder(str(tmp))
                builder.add_meta_graph_and_variables(
                    session,
                    [SERVE_TAG],
                    signature_def_map={"serving_default": signature},
                    strip_default_attrs=True,
                )
                builder.save()
    log.info("saved TensorFlow 1.x %s model to %s", kind, export_dir)
    return export_dir


def save_tf2_model(model, export_dir):
    """Save a TensorFlow 2 SavedModel with a ``serving_default`` signature.

    For TF2 runtimes (``tf.saved_model.load``, TF Serving, TensorFlow Java 0.4+,
    bioimage.io tools): the signature takes ``input_tensor`` (float32,
    ``(None, None, None, 1)``, raw pixel values) and returns a dict
    ``{'density': (batch, H, W, 1)}`` or ``{'max_count': (batch, 1)}``. Weights are
    constants of the function graph; loading it needs neither Keras nor defcon.

    Parameters
    ----------
    model : FCN
        A network whose ``output_kind`` is 'density' or 'max_count'.
    export_dir : str or Path
        The SavedModel folder to create (an existing SavedModel folder is replaced
        atomically).

    Returns
    -------
    Path

    Raises
    ------
    ExportError, UnsupportedFileError
        As :func:`save_tf1_model`.

    Examples
    --------
    >>> save_tf2_model(model, "density_tf2")  # doctest: +SKIP
    >>> serve = tf.saved_model.load("density_tf2").signatures["serving_default"]  # doctest: +SKIP
    >>> serve(input_tensor=frames)["density"]  # doctest: +SKIP
    """
    tf = require_tensorflow("the TF2 SavedModel export")

    kind, steps = _network_spec(model)
    key = EXPORTABLE_KINDS[kind]
    export_dir = Path(export_dir)

    class _Serving(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec((None, None, None, 1), tf.float32, name=INPUT_NAME)]
        )
        def serve(self, input_tensor):
            return {key: tf.identity(_forward(input_tensor, steps), name=key)}

    module = _Serving(name=f"defcon_{key}")
    with _staged_folder(export_dir, _SAVED_MODEL_NAMES) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    log.info("saved TensorFlow 2 %s model to %s", kind, export_dir)
    return export_dir


def _fiji_readme(model_name, box, division):
    from . import __version__

    division_note = (
        f"Both outputs are divided by {division:g} (--division).\n" if division is not None else ""
    )
    return f"""DEFCoN models for Fiji, exported by defcon {__version__} from '{model_name}'.

Install: copy this DEFCoN folder into Fiji.app/plugins/ (so that you have
Fiji.app/plugins/DEFCoN/tf_density_count/saved_model.pb), then restart Fiji.

tf_density_count/  density map network. Input: one image, any size whose sides are
                   multiples of 4, raw pixel values. Output: the density map (same
                   size); its sum is the number of emitters.
                   Read by "Plugins > DEFCoN > Density map..." of the DEFCoN-ImageJ
                   plugin and by both commands of defcon's own plugin
                   (defcon-serving jar; it pads images to multiples of 4 itself).
tf_max_count/      maximum local count network: the largest number of emitters in
                   any {box}x{box} pixel box of the image (a single number).
                   Read by "Plugins > DEFCoN > Maximum local count..." of the
                   DEFCoN-ImageJ plugin.
{division_note}
Both are TensorFlow 1.x SavedModels (tag "serve", feed "input_tensor" float32
[1, h, w, 1], fetch "output_tensor"), loadable by TensorFlow Java 1.6 to 1.15.
"""


def export_fiji(model, out_dir, box_size=7, division=None, *, box=None):
    """Write the DEFCoN folder for Fiji: density and max-count models and a README.

    Creates ``out_dir/DEFCoN/tf_density_count/``, ``out_dir/DEFCoN/tf_max_count/``
    (maximum count in a ``box_size`` x ``box_size`` box) and ``out_dir/DEFCoN/README.txt``.
    Copy the DEFCoN folder into ``Fiji.app/plugins/`` (or give that folder as
    ``out_dir``). The folder is written atomically; an existing DEFCoN folder is
    replaced only if it holds nothing but a previous export.

    Parameters
    ----------
    model : FCN or str or Path
        A density network (or a 'both' or 'max_count' FCN, whose density stage
        is used), or a model file for :meth:`FCN.from_file`.
    out_dir : str or Path
        The folder to create ``DEFCoN`` in.
    box_size : int
        Side in pixels of the max-count box (DEFCoN's default is 7).
    box : int, optional
        The former name of ``box_size`` (deprecated).
    division : float, optional
        Divide both outputs by this.

    Returns
    -------
    Path
        ``out_dir/DEFCoN``.

    Raises
    ------
    ExportError
        The model has no density stage, or ``box_size``/``division`` is invalid.
    ModelFileError, MissingFileError
        ``model`` is a path that does not hold a defcon model.
    UnsupportedFileError
        ``out_dir/DEFCoN`` exists and holds other files.
    BackendError
        Keras runs on another backend than TensorFlow, or TensorFlow is missing.

    Examples
    --------
    >>> export_fiji("model.keras", "Fiji.app/plugins")  # doctest: +SKIP
    PosixPath('Fiji.app/plugins/DEFCoN')
    """
    from .networks import FCN

    require_tensorflow("the Fiji export")
    if isinstance(model, (str, os.PathLike)):
        model = FCN.from_file(model)
    kind = getattr(model, "output_kind", None)
    if kind in ("both", "max_count"):
        model = model.with_output("density")
    elif kind != "density":
        _network_spec(model)  # raises the explanatory ExportError
    if box is not None:
        warnings.warn("export_fiji(box=) is now box_size=", DeprecationWarning, stacklevel=2)
        box_size = box
    if isinstance(box_size, bool) or not isinstance(box_size, int) or box_size < 1:
        raise ExportError(f"box_size must be a positive whole number of pixels, not {box_size!r}")
    division = _check_division(division)
    target = Path(out_dir) / FIJI_FOLDER
    with _staged_folder(target, (FIJI_DENSITY, FIJI_MAX_COUNT, FIJI_README)) as tmp:
        tmp.mkdir()
        save_tf1_model(model, tmp / FIJI_DENSITY, division=division)
        save_tf1_model(
            model.with_max_count(pool=(box_size, box_size)), tmp / FIJI_MAX_COUNT, division=division
        )
        (tmp / FIJI_README).write_text(
            _fiji_readme(model.name, box_size, division), encoding="utf-8"
        )
    log.info("wrote the Fiji folder %s", target)
    return target


# --------------------------------------------------------------------------- inspection
def tf1_op_types(export_dir):
    """Return the op types of every graph in a SavedModel, without loading it.

    Includes the ops of the graph's function library, if any.

    Parameters
    ----------
    export_dir : str or Path
        A SavedModel folder.

    Returns
    -------
    set of str

    Raises
    ------
    MissingFileError
        ``export_dir/saved_model.pb`` does not exist.
    UnsupportedFileError
        The file is not a SavedModel.
    """
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = Path(export_dir) / "saved_model.pb"
    if not path.is_file():
        raise MissingFileError(f"{path}: SavedModel file not found")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(path.read_bytes())
    except DecodeError as err:
        raise UnsupportedFileError(f"{path}: not a SavedModel: {err}") from err
    types = set()
    for meta_graph in saved.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return types
