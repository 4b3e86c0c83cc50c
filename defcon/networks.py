"""FCN: the DEFCoN network as a Keras model, and what users do with it.

``FCN`` *is* the Keras model (a functional ``keras.Model`` subclass), so
``fit``, ``predict``, ``summary`` and ``save`` work as usual. It adds loading
from every file kind a DEFCoN user has (:meth:`FCN.from_file`).
"""

import json
import logging
import os
from pathlib import Path

import h5py
import keras
import numpy as np

from . import models
from .errors import (
    ConfigError,
    MissingFileError,
    ModelFileError,
    ModelKindError,
    UnsupportedFileError,
)
from .files import existing_file
from .frames import padded_side
from .resources import DEFAULT_PRETRAINED, PRETRAINED_MODELS, model_file, shipped_model_file

log = logging.getLogger(__name__)

#: The published DEFCoN model (Ottino et al., BSD-3), not shipped: see :meth:`FCN.published`.
PUBLISHED_FILE = "defcon_tf13.h5"
PUBLISHED_URL = "https://github.com/LEB-EPFL/DEFCoN/raw/master/defcon/resources/defcon_tf13.h5"
#: Environment variable naming the downloaded published model.
PUBLISHED_ENV = "DEFCON_PUBLISHED_MODEL"


@keras.saving.register_keras_serializable(package="defcon")
class FCN(keras.Model):
    """The DEFCoN fully convolutional network.

    Parameters
    ----------
    inputs, outputs : KerasTensor, optional
        A layer graph (used by Keras when loading); by default the DEFCoN graph
        of :func:`defcon.models.defcon_graph` is built.
    name : str
        The model's name.
    output : {'seg', 'density', 'both'}
        Which map the new network returns (ignored when ``inputs`` is given).
    dropout_rate : float
        Rate of the dropout layers (training only).
    seed : int, optional
        Seed of the initialisers and dropout layers.
    **kwargs
        Passed to ``keras.Model``.

    Examples
    --------
    >>> import numpy as np
    >>> model = FCN(output="density", seed=0)
    >>> model.predict(np.zeros((1, 64, 48, 1), "float32"), verbose=0).shape
    (1, 64, 48, 1)
    """

    # The positional arguments mirror keras Functional's, so Keras serialises
    # FCN as a functional model (the layer graph), whatever its output.
    def __init__(
        self,
        inputs=None,
        outputs=None,
        name="defcon",
        *,
        output="density",
        dropout_rate=0.5,
        seed=None,
        envelope=None,
        **kwargs,
    ):
        if isinstance(inputs, keras.Model) or "model" in kwargs:
            raise ConfigError(
                "FCN(model) wrapped a Keras model in the original DEFCoN; a defcon "
                "FCN is the model: use FCN(output=...), models.DEFCoN(...) or "
                "FCN.from_file(path)"
            )
        if inputs is None:
            inputs, outputs = models.defcon_graph(output, dropout_rate=dropout_rate, seed=seed)
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.envelope = envelope

    @property
    def envelope(self):
        """The imaging conditions the model was trained on (:class:`defcon.envelope.Envelope`).

        None when unknown (models from elsewhere, or trained without one);
        saved with the model and checked by prediction.
        """
        from .envelope import Envelope

        return Envelope.from_dict(json.loads(self._envelope_json or "null"))

    @envelope.setter
    def envelope(self, value):
        from .envelope import Envelope

        if isinstance(value, Envelope):
            value = value.to_dict()
        # Kept as text: Keras would track a dict as model state.
        self._envelope_json = (
            None if value is None else json.dumps(Envelope.from_dict(value).to_dict())
        )

    def get_config(self):
        config = super().get_config()
        if self._envelope_json is not None:
            config["envelope"] = json.loads(self._envelope_json)
        return config

    @property
    def output_kind(self):
        """'seg', 'density', 'both' or 'max_count': what the network returns."""
        if len(self.outputs) == 2:
            return "both"
        names = {layer.name for layer in self.layers}
        if "max_local_count" in names:
            return "max_count"
        return "density" if "density" in names else "seg"

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_file(cls, path, output=None):
        """Load a network from any file a DEFCoN user may have.

        Accepted: ``.keras`` files saved by defcon (loaded in Keras safe mode: no
        code from the file runs); original DEFCoN Keras 2 HDF5 models such as
        ``defcon_tf13.h5`` (weights read by layer name; the stored Lambda is
        never unmarshalled); weights-only HDF5 files written by Keras
        checkpoints (``*.weights.h5`` of Keras 3, or Keras 2 ``save_weights``);
        bioimage.io packages written by defcon (zip or folder; every SHA-256 is
        checked first, see :func:`defcon.package_reader.load_package`); ZEN
        ``.czann`` files (checked by :func:`defcon.czann.read_czann`), returned
        as an onnxruntime-backed :class:`defcon.czann.CzannModel` that predicts
        (``predict``, ``predict_stack``) but is not an FCN.

        Parameters
        ----------
        path : str or Path
            The file, or the name of a shipped model (``pretrained`` or one of
            :data:`~defcon.resources.PRETRAINED_MODELS`) when no such file exists.
        output : {'seg', 'density', 'both'}, optional
            Rebuild the network with this output (default: what the file holds).

        Returns
        -------
        FCN

        Raises
        ------
        MissingFileError
            The file does not exist (for a missing ``defcon_tf13.h5``, the message
            says how to get the published model, see :meth:`published`).
        ModelFileError
            The file is not a DEFCoN model or its weights do not fit.
        IntegrityError
            A package file does not match its checksum, or a zip path is unsafe.
        """
        from .package_reader import is_package, load_package

        path = model_file(path)
        if not path.exists():
            raise _missing_model(path)
        path = existing_file(path, "model file")
        if is_package(path):
            model = load_package(path)
        elif path.suffix.lower() == ".czann":
            return _load_czann(path, output)
        elif path.suffix == ".keras":
            model = _load_keras_file(path)
        elif h5py.is_hdf5(path):
            model = _load_hdf5(path, output)
        else:
            raise UnsupportedFileError(
                f"{path}: not a model file (expected a .keras file or a Keras HDF5 "
                "model or weights file)"
            )
        if output is not None and model.output_kind != output:
            model = model.with_output(output)
        return model

    def with_max_count(self, pool=(7, 7), strides=(1, 1)):
        """Return a new max-local-count model built on this density network.

        The density map goes through average pooling times the pool area (the
        emitter count in every ``pool`` box, 'valid') and a global maximum, as
        in DEFCoN. The new model shares this one's layers and weights (training
        one changes the other, as in DEFCoN); this model is left as it is.

        Parameters
        ----------
        pool : tuple of int
            Box (height, width) in pixels.
        strides : tuple of int
            Box step.

        Returns
        -------
        FCN
            Input ``(batch, H, W, 1)``, output ``(batch, 1)``; H and W at least
            the pool size.

        Raises
        ------
        ModelKindError
            This network has no density stage (a segmentation network).
        """
        if self.output_kind == "seg":
            raise ModelKindError(
                f"model '{self.name}' is a segmentation network: a max-count "
                "model needs the density stage (train or load a density model)"
            )
        density = self.get_layer("density").output
        count = models.MaxLocalCount(pool, strides, name="max_local_count")(density)
        return FCN(
            inputs=self.input, outputs=count, name=f"{self.name}_max_count", envelope=self.envelope
        )

    def density_to_max_count(self, pool=(7, 7), strides=(1, 1)):
        """Convert this FCN to predict the maximum local count, as DEFCoN did.

        The original DEFCoN changed the model in place, so its recipe for the
        Fiji max-count model was ``model.density_to_max_count();
        model.save_tf_model(dir)``. Here the max-count model is built by
        :meth:`with_max_count`, remembered, and returned; afterwards the
        methods DEFCoN had act on it: :meth:`predict` and :meth:`predict_tiff`
        return max local counts ``(N, 1)``, :meth:`save_tf_model`, ``save`` and
        ``summary`` export, save and describe the max-count model. The Keras
        graph of this object stays the density network (calling it, ``fit``,
        ``layers``, :meth:`predict_stack`, :func:`defcon.export.export_fiji`).
        Calling it again replaces the conversion. To keep a density model
        unchanged, use :meth:`with_max_count`.

        Parameters
        ----------
        pool, strides : tuple of int
            See :meth:`with_max_count`.

        Returns
        -------
        FCN
            The max-count model (also :attr:`max_count_model`).
        """
        converted = self.with_max_count(pool, strides)
        # Held in a plain object: Keras would track a model attribute as a layer.
        self._conversion = _Conversion(converted)
        log.info(
            "model '%s' converted to max local count (%dx%d box): predict, predict_tiff, "
            "save and save_tf_model now use it",
            self.name,
            *converted.layers[-1].pool_size,
        )
        return converted

    @property
    def max_count_model(self):
        """The model made by :meth:`density_to_max_count` on this object, or None."""
        conversion = getattr(self, "_conversion", None)
        return None if conversion is None else conversion.model

    def predict(self, x, *args, **kwargs):
        """Keras ``predict``, for frames of any size.

        The network needs heights and widths that are multiples of
        :data:`defcon.frames.SIDE_MULTIPLE`; other frames (a numpy array
        ``(N, H, W, 1)``) are padded at the bottom and right by repeating the
        last row and column, as :meth:`predict_stack` does, and the maps cropped
        back to ``(N, H, W, 1)``. After :meth:`density_to_max_count`, returns
        max counts ``(N, 1)``. Other arguments are Keras'.
        """
        if self.max_count_model is not None:
            return self.max_count_model.predict(x, *args, **kwargs)
        if not (isinstance(x, np.ndarray) and x.ndim == 4) or self.output_kind == "max_count":
            return super().predict(x, *args, **kwargs)  # datasets, generators: as Keras does
        height, width = x.shape[1:3]
        pad = [(0, 0), *((0, padded_side(n) - n) for n in (height, width)), (0, 0)]
        maps = super().predict(np.pad(x, pad, mode="edge"), *args, **kwargs)
        if isinstance(maps, dict):  # a 'both' network: {'seg': ..., 'density': ...}
            return {name: m[:, :height, :width] for name, m in maps.items()}
        return maps[:, :height, :width]

    def summary(self, *args, **kwargs):
        """Keras ``summary``; after :meth:`density_to_max_count`, the max-count model's."""
        if self.max_count_model is not None:
            return self.max_count_model.summary(*args, **kwargs)
        return super().summary(*args, **kwargs)

    def save(self, filepath, *args, **kwargs):
        """Keras ``save``; after :meth:`density_to_max_count`, saves the max-count model."""
        if self.max_count_model is not None:
            return self.max_count_model.save(filepath, *args, **kwargs)
        return super().save(filepath, *args, **kwargs)

    # ------------------------------------------------------------- prediction
    def predict_tiff(
        self,
        input_file,
        index=None,
        *,
        batch_size=None,
        output=None,
        progress=False,
        verbose=None,
        **options,
    ):
        """Predict density maps for a TIFF stack, streaming it in chunks.

        See :func:`defcon.predict.predict_tiff` for the parameters (``options``:
        ``precision``, ``tile_size``, ``check_envelope``, ``stack_options``).
        ``verbose`` (Keras' name, which DEFCoN passed on to ``predict``) shows
        the progress bar unless it is 0.

        After :meth:`density_to_max_count`, returns the max local count of each
        frame, ``(N, 1)`` float32, as DEFCoN did (with the deprecated ``output``,
        the density maps are written and the per-frame counts returned, as without
        conversion). To count emitters and write files, use
        :func:`defcon.predict.count_tiff`.

        Raises
        ------
        ConfigError
            A Keras ``predict`` option defcon does not take (``steps``, ``callbacks``).
        """
        from .predict import predict_tiff

        keras_only = sorted({"steps", "callbacks"} & set(options))
        if keras_only:
            raise ConfigError(
                f"predict_tiff: Keras predict option(s) {', '.join(keras_only)} "
                "not supported: defcon streams the stack itself (choose frames "
                "with index=..., the batch with batch_size=...)"
            )
        if verbose is not None:
            progress = progress or verbose != 0
        result = predict_tiff(
            self,
            input_file,
            index=index,
            batch_size=batch_size,
            output=output,
            progress=progress,
            **options,
        )
        if self.max_count_model is None or output is not None:
            return result
        box = self.max_count_model.get_layer("max_local_count")
        chunk = 256
        return np.concatenate(
            [
                keras.ops.convert_to_numpy(box(result[a : a + chunk]))
                for a in range(0, len(result), chunk)
            ]
            or [np.zeros((0, 1))],
            dtype=np.float32,
        )

    def predict_stack(self, stack, batch_size=None, **options):
        """Predict density maps for frames in memory, any frame size.

        See :func:`defcon.predict.predict_stack` for the parameters (``options``:
        ``precision``, ``tile_size``).
        """
        from .predict import predict_stack

        return predict_stack(self, stack, batch_size=batch_size, **options)

    # ----------------------------------------------------------------- export
    def save_tf_model(self, export_dir="tf_model", division=None):
        """Save a SavedModel that TensorFlow 1.x runtimes (DEFCoN-ImageJ) load.

        See :func:`defcon.export.save_tf1_model` for the parameters. After
        :meth:`density_to_max_count`, the max-count model is exported (the
        original recipe for Fiji's ``tf_max_count``).
        """
        from .export import save_tf1_model

        model = self if self.max_count_model is None else self.max_count_model
        return save_tf1_model(model, export_dir, division=division)

    @classmethod
    def pretrained(cls, name=None):
        """A model trained by defcon and shipped with it.

        ``defcon-broad-2026c`` (the default) was trained on simulated stacks
        drawn from :data:`defcon.conditions.TRAINING_RANGES`: in-focus PSF sigma
        0.7-2.5 px (and more stacks at 2.5-4 px), 200-20,000 photons per frame,
        background up to 300 photons per pixel, EMCCD, sCMOS and CCD cameras,
        uniform, clustered and filament layouts, 0-360 emitters per 64 x 64
        frame. Its envelope is in its metadata (:attr:`envelope`: PSF sigma
        0.7-2.5 px, where its counts were measured to hold) and prediction
        warns outside it. ``defcon-broad-2026b``, the previous model, was
        trained on PSF sigma up to 2.5 px only; ``defcon-sim-2026a``, the one
        before, was fine-tuned from the published DEFCoN model on one simulated
        microscope (PSF sigma 1.0 px).
        Each model's card (training data, envelope, benchmark) is
        ``defcon/resources/<name>.md``.

        Parameters
        ----------
        name : str, optional
            One of :data:`PRETRAINED_MODELS`; default :data:`DEFAULT_PRETRAINED`.

        Returns
        -------
        FCN
            A density model.

        Raises
        ------
        ConfigError
            ``name`` is not a shipped model.
        """
        path = shipped_model_file(DEFAULT_PRETRAINED if name is None else name)
        if path is None:
            raise ConfigError(f"pretrained model {name!r}: expected one of {PRETRAINED_MODELS}")
        return cls.from_file(path)

    @classmethod
    def published(cls, path=None):
        """The published DEFCoN model (Ottino, Douglass, Manley; Keras 2.0.8, TF 1.3).

        defcon does not ship it. Download ``defcon_tf13.h5`` from the original
        repository (:data:`PUBLISHED_URL`, BSD-3 licence) and pass its path, or
        set the environment variable ``DEFCON_PUBLISHED_MODEL`` to it.

        Parameters
        ----------
        path : str or Path, optional
            The downloaded ``defcon_tf13.h5`` (default: ``$DEFCON_PUBLISHED_MODEL``).

        Returns
        -------
        FCN
            A density model with the original weights.

        Raises
        ------
        ModelFileError
            No path given and ``DEFCON_PUBLISHED_MODEL`` unset, or the file is
            not a DEFCoN density model.
        MissingFileError
            The file named does not exist.
        """
        where = "" if path else f" (from {PUBLISHED_ENV})"
        path = path or os.environ.get(PUBLISHED_ENV)
        if not path:
            raise ModelFileError(
                f"the published DEFCoN model is not shipped with defcon: "
                f"download {PUBLISHED_URL} (BSD-3) and pass its path to "
                f"FCN.published(path) or set {PUBLISHED_ENV}=/path/to/"
                f"{PUBLISHED_FILE}"
            )
        path = Path(path).expanduser()
        if not path.exists():
            raise MissingFileError(
                f"{path}{where}: published DEFCoN model not found; download it from {PUBLISHED_URL}"
            )
        model = cls.from_file(path)
        if model.output_kind != "density":
            raise ModelFileError(
                f"{path}: holds a '{model.output_kind}' network, not the "
                f"published DEFCoN density model ({PUBLISHED_URL})"
            )
        return model

    def with_output(self, output):
        """Return a new FCN sharing this one's weights, with another output.

        Parameters
        ----------
        output : {'seg', 'density', 'both'}
        """
        new = FCN(output=output, name=self.name, envelope=self.envelope)
        copy_weights_by_name(self, new)
        return new


class _Conversion:
    """Holds the model :meth:`FCN.density_to_max_count` made, out of Keras' tracking."""

    def __init__(self, model):
        self.model = model


def _missing_model(path):
    """The MissingFileError for a model path that does not exist, with a hint if we have one."""
    if path.name == PUBLISHED_FILE:
        return MissingFileError(
            f"{path}: not found; defcon does not ship the published DEFCoN model: download "
            f"{PUBLISHED_URL} (BSD-3) and load it with FCN.published(path) or "
            f"FCN.from_file(path), or set {PUBLISHED_ENV} and call FCN.published()"
        )
    keras_file = path.with_suffix(".keras")
    if path.suffix.lower() in (".h5", ".hdf5") and keras_file.exists():
        return MissingFileError(
            f"{path}: not found; defcon training saves the model in Keras 3 "
            f"format: load {keras_file}"
        )
    return MissingFileError(f"{path}: model file not found")


def _load_czann(path, output):
    from .czann import CzannModel

    if output not in (None, "density"):
        raise ModelKindError(f"{path}: a .czann model has a density output only, not '{output}'")
    return CzannModel(path)


def _load_keras_file(path):
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as err:  # Keras raises many kinds; all mean "not loadable"
        raise ModelFileError(f"{path}: cannot load as a defcon .keras model: {err}") from err
    if not isinstance(model, FCN):
        raise ModelFileError(f"{path}: holds a {type(model).__name__}, not a defcon FCN")
    return model


def _weight_groups(path):
    """Map layer name -> list of weight arrays for Keras-2-style HDF5 files.

    Returns None when the file is not organised by layer name.
    """
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in root.attrs:
            return None
        weights = {}
        for raw in root.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            group = root[name]
            names = [
                n.decode() if isinstance(n, bytes) else str(n)
                for n in group.attrs.get("weight_names", [])
            ]
            if names:
                weights[name] = {n.split("/")[-1].split(":")[0]: group[n][()] for n in names}
        return weights


def _keras_layer_names(path):
    """Layer names stored in a Keras 2 / legacy HDF5 model config, if any."""
    with h5py.File(path, "r") as f:
        config = f.attrs.get("model_config")
    if config is None:
        return None
    if isinstance(config, bytes):
        config = config.decode()
    try:
        return [layer["config"]["name"] for layer in json.loads(config)["config"]["layers"]]
    except (KeyError, TypeError, ValueError):
        return None


def _load_hdf5(path, output):
    by_name = _weight_groups(path)
    if by_name is None:
        return _load_keras3_weights(path, output)
    known = set(models.SEGMENTATION_LAYER_NAMES + models.DENSITY_LAYER_NAMES)
    if not known & set(by_name):
        raise ModelFileError(
            f"{path}: no DEFCoN layers found (expected layers named "
            f"{', '.join(models.SEGMENTATION_LAYER_NAMES[:3])}, ...)"
        )
    has_density = set(models.DENSITY_LAYER_NAMES) <= set(by_name)
    model = FCN(output="density" if has_density else "seg", name=path.stem)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in by_name:
            raise ModelFileError(f"{path}: no weights for layer '{layer.name}'")
        stored = by_name[layer.name]
        arrays = [stored.get("kernel")] + ([stored.get("bias")] if len(layer.weights) == 2 else [])
        expected = [tuple(w.shape) for w in layer.weights]
        if any(a is None for a in arrays) or [a.shape for a in arrays] != expected:
            found = {k: v.shape for k, v in stored.items()}
            raise ModelFileError(
                f"{path}: layer '{layer.name}' has weights {found}, "
                f"expected kernel/bias of shapes {expected}"
            )
        layer.set_weights(arrays)
    names = _keras_layer_names(path)
    if names and "hist_norm" not in names:
        log.warning(
            "%s: the stored model has no 'hist_norm' layer; defcon normalises every frame anyway",
            path,
        )
    return model


def _load_keras3_weights(path, output):
    with h5py.File(path, "r") as f:
        if "layers" not in f:
            raise ModelFileError(f"{path}: an HDF5 file, but not a Keras model or weights file")
        n_layers = sum(1 for group in f["layers"].values() if len(group.get("vars", ())))
    n_seg = len(models.SEGMENTATION_LAYER_NAMES)
    n_all = n_seg + len(models.DENSITY_LAYER_NAMES)
    if n_layers not in (n_seg, n_all):
        raise ModelFileError(
            f"{path}: {n_layers} layers with weights; a DEFCoN network has "
            f"{n_seg} (segmentation) or {n_all} (full)"
        )
    model = FCN(output="seg" if n_layers == n_seg else "density", name=path.stem.split(".")[0])
    try:
        model.load_weights(path)
    except Exception as err:  # Keras reports mismatches with assorted exception types
        raise ModelFileError(f"{path}: weights do not fit the DEFCoN network: {err}") from err
    return model


def copy_weights_by_name(source, target):
    """Copy the weights of every layer of ``target`` that ``source`` has by name.

    Parameters
    ----------
    source, target : keras.Model

    Returns
    -------
    list of str
        The layers copied (callers decide whether too few were).

    Raises
    ------
    ModelFileError
        A layer of the same name holds weights of other shapes (another
        architecture under DEFCoN's layer names).
    """
    source_layers = {layer.name: layer for layer in source.layers}
    copied = []
    for layer in target.layers:
        if layer.weights and layer.name in source_layers:
            weights = source_layers[layer.name].get_weights()
            expected = [w.shape for w in layer.get_weights()]
            if [w.shape for w in weights] != expected:
                raise ModelFileError(
                    f"model '{source.name}': layer '{layer.name}' has weights of shapes "
                    f"{[w.shape for w in weights]}, the DEFCoN network needs {expected}"
                )
            layer.set_weights(weights)
            copied.append(layer.name)
    return copied
