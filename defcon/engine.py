"""The DEFCoN network compiled for inference, weights as constants.

On the TensorFlow backend: one ``tf.function`` of plain TensorFlow ops per
model and precision (no Keras call overhead; fused conv + bias + ReLU oneDNN
kernels). On other Keras backends (JAX, PyTorch): the same computation in
``keras.ops``, jitted by the backend (``jax.jit``; PyTorch runs it eagerly
without autograd). The transposed convolutions run as sub-pixel
convolutions (a 2x2 convolution giving 2x2 output pixels as channels, then
depth-to-space), 1.5-14x faster than TensorFlow's ``Conv2DBackpropInput``
here and ~1.5-1.8x faster than JAX's transposed convolution on a CPU. In
``bfloat16`` the convolutions use AMX/AVX512-BF16 where the CPU has them.
Results equal Keras' to ~5e-8.
"""

import hashlib
import logging
import weakref

import numpy as np

from . import backends
from .errors import ModelKindError, ParameterError

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16")
#: bfloat16 is 2.5-2.9x faster on an AMX CPU and moves counts by +0.25 %: opt-in.
DEFAULT_PRECISION = "float32"
_STAGES = {
    "seg": (
        "conv_seg_1",
        "conv_stride_1",
        "conv_seg_2",
        "conv_stride_2",
        "conv_seg_3",
        "deconv_seg_1",
        "decon_seg_2",
        "seg",
    ),
    "density": (
        "conv_1",
        "conv_2",
        "conv_3",
        "conv_4",
        "conv_5",
        "deconv_1",
        "deconv_2",
        "density",
    ),
}
_CACHE = weakref.WeakKeyDictionary()
#: Share of ``predict.BATCH_PIXELS`` per call for PyTorch on a CPU: it runs eagerly,
#: each op writing its whole output, and a quarter kept in cache ran 1.6-2.3x faster.
TORCH_CPU_BATCH_SHARE = 0.25


def compiled_network(model, precision):
    """The compiled network for ``model``, rebuilt when its weights change."""
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if getattr(model, "output_kind", None) == "max_count":
        raise ModelKindError(
            f"model '{model.name}' returns a max local count, not a map; "
            "predict with its density network and use max_local_count"
        )
    weights = {layer.name: _numpy_weights(layer) for layer in model.layers if layer.weights}
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(weights):
        digest.update(name.encode())
        for array in weights[name]:
            digest.update(np.ascontiguousarray(array).tobytes())
    cached = _CACHE.setdefault(model, {})
    if cached.get(precision, (None,))[0] != digest.hexdigest():
        network = _Network if backends.is_tensorflow() else _KerasNetwork
        cached[precision] = (digest.hexdigest(), network(model, weights, precision))
    return cached[precision][1]


def _numpy_weights(layer):
    """``layer.get_weights()``, without the NumPy 2 copy warning Keras' JAX variables raise."""
    if backends.is_tensorflow():
        return layer.get_weights()
    return [_to_numpy(v.value) for v in layer.weights]


def _to_numpy(x):
    """``keras.ops.convert_to_numpy(x)`` as a NumPy array.

    A PyTorch tensor is converted by PyTorch: Keras' ``np.array(tensor)`` warns
    that ``Tensor.__array__`` takes no ``copy`` keyword (NumPy 2).
    """
    if isinstance(x, np.ndarray):  # predict_on_batch's output
        return x
    if backends.configured_backend() == "torch":
        return x.detach().cpu().numpy()
    from keras import ops

    return np.asarray(ops.convert_to_numpy(x))


def _expected_shapes(names, layer_specs):
    shapes, cin = {}, 1
    for (kind, k, filters), name in zip(layer_specs, names):
        shapes[name] = (k, k, filters, cin) if kind == "deconv" else (k, k, cin, filters)
        cin = filters
    return shapes


def _stages(model, weights):
    """Layer names of each stage if ``model`` is a DEFCoN network, else None."""
    from . import models

    kinds = {"seg": ["seg"], "density": ["seg", "density"], "both": ["seg", "density"]}
    stages = kinds.get(getattr(model, "output_kind", None))
    specs = {"seg": models.SEG_LAYERS, "density": models.DENSITY_LAYERS}
    for stage in stages or ():
        layer_specs = [(kind, k, f) for _, kind, f, k, _ in specs[stage] if kind != "dropout"]
        expected = _expected_shapes(_STAGES[stage], layer_specs + [("conv", 1, 1)])
        if any(
            name not in weights or weights[name][0].shape != shape
            for name, shape in expected.items()
        ):
            return None
    return [_STAGES[stage] for stage in stages] if stages else None


class _Network:
    """``net(x, normalize)``: density (or seg) maps of float32 ``(n, H, W, 1)``, H, W % 4 == 0.

    ``batch_share``: the share of the default batch pixels that runs fastest.
    """

    batch_share = 1.0

    def __init__(self, model, weights, precision):
        import tensorflow as tf

        names = _stages(model, weights)
        self.precision, self.tileable = precision, names is not None
        spec = [tf.TensorSpec([None, None, None, 1], tf.float32)]
        if names is None:
            log.info(
                "model '%s' is not a standard DEFCoN network: running it as it is "
                "(float32, untiled)",
                model.name,
            )
            self._fns = {
                True: tf.function(lambda x: model(x, training=False), input_signature=spec)
            }
            return
        dtype = tf.as_dtype(precision)
        stages = [
            [[tf.constant(a, dtype) for a in arrays] for arrays in _stage_weights(weights, stage)]
            for stage in names
        ]

        def body(x):
            x = tf.cast(x, dtype)
            for i, stage in enumerate(stages):
                x = _stage(tf, tf.sigmoid(x) if i else x, stage)
            return tf.cast(tf.sigmoid(x) if len(stages) == 1 else x, tf.float32)

        self._fns = {
            False: tf.function(body, input_signature=spec),
            True: tf.function(lambda x: body(_histnorm(tf, x)), input_signature=spec),
        }

    def __call__(self, x, normalize=True):
        return self._fns[normalize](x).numpy()


class _KerasNetwork:
    """:class:`_Network` in ``keras.ops``, for the JAX and PyTorch backends."""

    batch_share = 1.0

    def __init__(self, model, weights, precision):
        from keras import ops

        from .models import histnorm

        names = _stages(model, weights)
        self.precision, self.tileable = precision, names is not None
        if names is None:
            log.info(
                "model '%s' is not a standard DEFCoN network: running it as it is "
                "(float32, untiled)",
                model.name,
            )
            self._fns = {True: lambda x: _one_map(model.predict_on_batch(x))}
            return
        stages = [
            [
                [ops.cast(ops.convert_to_tensor(a), precision) for a in arrays]
                for arrays in _stage_weights(weights, stage)
            ]
            for stage in names
        ]

        def body(x):
            x = ops.cast(x, precision)
            for i, stage in enumerate(stages):
                x = _ops_stage(ops.sigmoid(x) if i else x, stage)
            return ops.cast(ops.sigmoid(x) if len(stages) == 1 else x, "float32")

        like = stages[0][0][0]
        if backends.configured_backend() == "torch" and like.device.type == "cpu":
            self.batch_share = TORCH_CPU_BATCH_SHARE
        self._fns = {
            False: _compiled(body, like),
            True: _compiled(lambda x: body(histnorm(x)), like),
        }

    def __call__(self, x, normalize=True):
        return _to_numpy(self._fns[normalize](x))


def _one_map(maps):
    """The density map of a model's output: a 'both' network's dict gives its density."""
    return maps["density"] if isinstance(maps, dict) else maps


def _compiled(fn, like):
    """``fn`` compiled by the active backend: ``jax.jit``, or without autograd for PyTorch.

    PyTorch ops take no NumPy arrays: the input becomes a tensor on the device
    of ``like`` (a weight), wherever the caller runs.
    """
    backend = backends.configured_backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        def no_grad(x):
            with torch.inference_mode():
                return fn(torch.as_tensor(x, device=like.device))

        return no_grad
    return fn


def _ops_stage(x, t):
    """:func:`_stage` in ``keras.ops``: one DEFCoN stage, (n, H, W, 1) -> (n, H, W, 1)."""
    from keras import ops

    def conv(x, wb, stride=1, pad=False):
        if pad:  # the sub-pixel kernels look one block up and left
            x = ops.pad(x, [[0, 0], [1, 0], [1, 0], [0, 0]])
        y = ops.conv(x, wb[0], stride, "valid" if pad else "same")
        return ops.relu(y + wb[1]) if len(wb) > 1 else y

    x = conv(conv(conv(conv(conv(x, t[0]), t[1], stride=2), t[2]), t[3], stride=2), t[4])
    x = _depth_to_space(conv(x, t[5], pad=True))
    return _depth_to_space(conv(conv(x, t[6], pad=True), t[7]))


def _depth_to_space(x):
    """``tf.nn.depth_to_space(x, 2)`` in ``keras.ops``: (n, H, W, 4c) -> (n, 2H, 2W, c)."""
    from keras import ops

    n, h, w, c = ops.shape(x)
    x = ops.reshape(x, (n, h, w, 2, 2, c // 4))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
    return ops.reshape(x, (n, 2 * h, 2 * w, c // 4))


def _histnorm(tf, x):
    """:class:`defcon.models.HistNorm` in TensorFlow ops: ``(n, H, W, 1)`` -> [0, 1] per frame."""
    lo = tf.reduce_min(x, axis=(1, 2, 3), keepdims=True)
    span = tf.reduce_max(x, axis=(1, 2, 3), keepdims=True) - lo
    return (x - lo) / tf.where(span > 0, span, tf.ones_like(span))


def _stage(tf, x, t):
    """One DEFCoN stage, (n, H, W, 1) -> (n, H, W, 1).

    The two transposed convolutions run as sub-pixel convolutions: the last one
    returns 2x2 pixel blocks as channels, so the final 1x1 convolution also runs
    on blocks, and one depth-to-space gives the full-resolution map.
    """

    def conv(x, wb, stride=1, pad=False):
        if pad:  # the sub-pixel kernels look one block up and left
            x = tf.pad(x, [[0, 0], [1, 0], [1, 0], [0, 0]])
        y = tf.nn.conv2d(x, wb[0], stride, "VALID" if pad else "SAME")
        return tf.nn.relu(tf.nn.bias_add(y, wb[1])) if len(wb) > 1 else y

    x = conv(conv(conv(conv(conv(x, t[0]), t[1], stride=2), t[2]), t[3], stride=2), t[4])
    x = tf.nn.depth_to_space(conv(x, t[5], pad=True), 2)
    return tf.nn.depth_to_space(conv(conv(x, t[6], pad=True), t[7]), 2)


def _stage_weights(weights, names):
    """Kernels (and biases) of :func:`_stage` from one stage's Keras weights."""
    w = [weights[n] for n in names]

    def tile(bias):  # block channels are ordered (row, column, channel)
        return np.tile(bias, 4)

    return [
        w[0],
        w[1],
        w[2],
        w[3],
        w[4],
        (_deconv_on_blocks(w[5][0]), tile(w[5][1])),
        (_deconv_on_blocks(w[6][0]), tile(w[6][1])),
        (_pointwise_on_blocks(w[7][0]),),
    ]


def _deconv_on_blocks(w):
    """Transposed stride-2 'same' conv, Keras kernel (3, 3, co, ci) -> sub-pixel conv.

    Output block (i, j) of the 2x2 'valid' conv, after padding one block at the
    top and left, holds the 2x2 output pixels (2i + a, 2j + b) in channels
    ``(2a + b) * co + c``: output pixel 2m + a gets kernel tap d from input m - (d - a) / 2.
    """
    k, _, co, ci = w.shape
    out = np.zeros((2, 2, ci, 4 * co), np.float32)
    for a, b, dy, dx in np.ndindex(2, 2, k, k):
        if (dy - a) % 2 == 0 and (dx - b) % 2 == 0:
            dst = (2 * a + b) * co
            out[1 + (a - dy) // 2, 1 + (b - dx) // 2, :, dst : dst + co] += w[dy, dx].T
    return out


def _pointwise_on_blocks(w):
    """1x1 conv (1, 1, ci, co) -> block-diagonal 1x1 conv (4ci -> 4co)."""
    ci, co = w.shape[2:]
    out = np.zeros((1, 1, 4 * ci, 4 * co), np.float32)
    for q in range(4):
        out[0, 0, q * ci : (q + 1) * ci, q * co : (q + 1) * co] = w[0, 0]
    return out
