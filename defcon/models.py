"""The DEFCoN architecture: its custom layer, its layers and its losses.

The network is a segmentation FCN followed by a density FCN (Ottino et al.,
DEFCoN). Layer names and shapes are those of the original Keras 2.0.8 model, so
original weights load by layer name.

Tensors are ``(batch, height, width, 1)`` float32; height and width must be
multiples of 4 (two stride-2 stages down, two up).
"""

import keras
from keras import layers, ops

from .errors import ParameterError

#: Segmentation layers in order: (name, kind, filters, kernel, stride).
SEG_LAYERS = (
    ("conv_seg_1", "conv", 16, 3, 1),
    ("conv_stride_1", "conv", 16, 3, 2),
    ("conv_seg_2", "conv", 32, 3, 1),
    ("conv_stride_2", "conv", 32, 3, 2),
    ("conv_seg_3", "conv", 64, 3, 1),
    ("dropout_seg", "dropout", None, None, None),
    ("deconv_seg_1", "deconv", 8, 3, 2),
    ("decon_seg_2", "deconv", 8, 3, 2),
)
#: Density layers in order, after the 1x1 sigmoid ``seg`` layer.
DENSITY_LAYERS = (
    ("conv_1", "conv", 16, 3, 1),
    ("conv_2", "conv", 16, 3, 2),
    ("conv_3", "conv", 32, 3, 1),
    ("conv_4", "conv", 32, 3, 2),
    ("conv_5", "conv", 64, 5, 1),
    ("dropout", "dropout", None, None, None),
    ("deconv_1", "deconv", 8, 3, 2),
    ("deconv_2", "deconv", 8, 3, 2),
)
#: Names of every layer with weights that belongs to the segmentation stage.
SEGMENTATION_LAYER_NAMES = tuple(n for n, kind, *_ in SEG_LAYERS if kind != "dropout") + ("seg",)
#: Names of every layer with weights that belongs to the density stage.
DENSITY_LAYER_NAMES = tuple(n for n, kind, *_ in DENSITY_LAYERS if kind != "dropout") + ("density",)
OUTPUTS = ("seg", "density", "both")


@keras.saving.register_keras_serializable(package="defcon")
class HistNorm(layers.Layer):
    """Per-frame min-max normalisation to [0, 1], inside the network.

    ``(x - min) / (max - min)`` over each frame's pixels; a flat frame (max ==
    min) gives zeros instead of NaN. Input and output: ``(batch, H, W, C)``.
    This is the specification (:func:`histnorm`, also used by the engine on
    JAX and PyTorch); each other runtime has one implementation of it:
    ``engine._histnorm`` (TensorFlow ops), ``predict._Runner._tiled`` (numpy,
    whole frames before tiling) and the TF1 graph of
    :func:`defcon.export.save_tf1_model` (raw ops only, for TensorFlow Java).
    """

    def call(self, inputs):
        return histnorm(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


def histnorm(x):
    """:class:`HistNorm` as a function of ``keras.ops``: ``(n, H, W, C)`` -> [0, 1] per frame."""
    lo = ops.min(x, axis=(1, 2, 3), keepdims=True)
    span = ops.max(x, axis=(1, 2, 3), keepdims=True) - lo
    return (x - lo) / ops.where(span > 0, span, ops.ones_like(span))


def _layer(name, kind, filters, kernel, stride, dropout_rate, seed):
    init = keras.initializers.Orthogonal(seed=seed)
    if kind in ("conv", "deconv"):
        layer = layers.Conv2D if kind == "conv" else layers.Conv2DTranspose
        return layer(
            filters,
            kernel,
            strides=stride,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            name=name,
        )
    return layers.Dropout(dropout_rate, seed=seed, name=name)


def defcon_graph(output="density", dropout_rate=0.5, seed=None):
    """Build the DEFCoN layer graph.

    Parameters
    ----------
    output : {'seg', 'density', 'both'}
        Which map the network returns: the segmentation probability, the
        density, or both (as a dict ``{'seg': ..., 'density': ...}``).
    dropout_rate : float
        Rate of the two dropout layers (active in training only).
    seed : int, optional
        Seed of the initialisers and dropout layers.

    Returns
    -------
    inputs : KerasTensor of shape (None, None, None, 1)
    outputs : KerasTensor of shape (None, None, None, 1), or dict of two
    """
    if output not in OUTPUTS:
        raise ParameterError(f"output must be one of {OUTPUTS}, not {output!r}")
    inputs = keras.Input(shape=(None, None, 1), name="input")
    x = HistNorm(name="hist_norm")(inputs)
    for spec in SEG_LAYERS:
        x = _layer(*spec, dropout_rate, seed)(x)
    seg = layers.Conv2D(1, 1, padding="same", activation="sigmoid", use_bias=False, name="seg")(x)
    if output == "seg":
        return inputs, seg
    x = seg
    for spec in DENSITY_LAYERS:
        x = _layer(*spec, dropout_rate, seed)(x)
    density = layers.Conv2D(
        1, 1, padding="same", activation="linear", use_bias=False, name="density"
    )(x)
    if output == "density":
        return inputs, density
    return inputs, {"seg": seg, "density": density}


@keras.saving.register_keras_serializable(package="defcon")
class DensityLoss(keras.losses.Loss):
    """Pixel loss plus ``lambda_factor`` times the count loss, per frame.

    For each frame: sum over pixels of ``(y_true - y_pred)**2`` plus
    ``lambda_factor * (sum(y_true) - sum(y_pred))**2``; averaged over the batch.

    Parameters
    ----------
    lambda_factor : float
        Weight of the count term (DEFCoN recommends 0.01).
    frame_weight_scale : float
        If > 0, each frame's loss is weighted by ``1 / (1 + n / frame_weight_scale)``
        (``n`` its true count), so sparse frames weigh as much as crowded ones,
        whose squared errors otherwise dominate; 0 weights frames equally.
    """

    def __init__(self, lambda_factor=0.01, frame_weight_scale=0.0, name="density_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.lambda_factor = float(lambda_factor)
        self.frame_weight_scale = float(frame_weight_scale)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        pixel = ops.sum(ops.square(y_true - y_pred), axis=(1, 2, 3))
        true_count = ops.sum(y_true, axis=(1, 2, 3))
        count = ops.square(true_count - ops.sum(y_pred, axis=(1, 2, 3)))
        loss = pixel + self.lambda_factor * count
        if self.frame_weight_scale > 0:
            loss = loss / (1.0 + true_count / self.frame_weight_scale)
        return loss

    def get_config(self):
        return {
            **super().get_config(),
            "lambda_factor": self.lambda_factor,
            "frame_weight_scale": self.frame_weight_scale,
        }


@keras.saving.register_keras_serializable(package="defcon")
class CountMAE(keras.metrics.MeanMetricWrapper):
    """Mean absolute error of the per-frame count (the sum of the density map)."""

    def __init__(self, name="count_mae", dtype=None):
        super().__init__(fn=count_absolute_error, name=name, dtype=dtype)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package="defcon")
def count_absolute_error(y_true, y_pred):
    """Per-frame ``|sum(y_true) - sum(y_pred)|``, shape ``(batch,)``."""
    y_true = ops.cast(y_true, y_pred.dtype)
    return ops.abs(ops.sum(y_true, axis=(1, 2, 3)) - ops.sum(y_pred, axis=(1, 2, 3)))


@keras.saving.register_keras_serializable(package="defcon")
class MaxLocalCount(layers.Layer):
    """Maximum over a frame of the emitter count in a sliding box.

    Average pooling times the pool area (box sums, 'valid' padding), then the
    maximum over the frame, as DEFCoN's max-count model.

    Parameters
    ----------
    pool_size : tuple of int
        Box (height, width) in pixels.
    strides : tuple of int
        Box step (rows, columns).

    Input ``(batch, H, W, 1)`` density; output ``(batch, 1)``.
    """

    def __init__(self, pool_size=(7, 7), strides=(1, 1), **kwargs):
        super().__init__(**kwargs)
        self.pool_size = tuple(int(p) for p in pool_size)
        self.strides = tuple(int(s) for s in strides)

    def call(self, inputs):
        box_mean = ops.average_pool(inputs, self.pool_size, self.strides, padding="valid")
        box_sum = box_mean * float(self.pool_size[0] * self.pool_size[1])
        return ops.max(box_sum, axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1)

    def get_config(self):
        return {**super().get_config(), "pool_size": self.pool_size, "strides": self.strides}


def DEFCoN(input_size=(None, None, 1), output="density"):  # noqa: N802 (DEFCoN's name)
    """DEFCoN's architecture function: a new, untrained network.

    As in DEFCoN, the density network's segmentation layers are frozen
    (``trainable = False``), ready for the second training stage.

    Parameters
    ----------
    input_size : tuple
        Only ``(None, None, 1)``: defcon networks take frames of any size.
    output : {'density', 'seg'}
        Which map the network returns.

    Returns
    -------
    defcon.networks.FCN
        With DEFCoN's layer names (``input``, ``hist_norm``, ``conv_seg_1``, ...).

    Raises
    ------
    ConfigError
        Another ``input_size``, or ``output='both'`` (DEFCoN returned
        ``[density, seg]``; ``FCN(output='both')`` returns a dict).
    """
    from .errors import ConfigError
    from .networks import FCN

    if tuple(input_size) != (None, None, 1):
        raise ConfigError(
            f"DEFCoN(input_size={tuple(input_size)}): defcon networks take frames "
            "of any size: drop input_size"
        )
    if output == "both":
        raise ConfigError(
            "DEFCoN(output='both') returned [density, seg]; in defcon use "
            "FCN(output='both'), which returns {'seg': ..., 'density': ...}"
        )
    if output not in ("density", "seg"):
        raise ConfigError(f"DEFCoN(output={output!r}): expected 'density' or 'seg'")
    model = FCN(output=output)
    if output == "density":
        for layer in model.layers:
            if layer.name in SEGMENTATION_LAYER_NAMES:
                layer.trainable = False
    return model
