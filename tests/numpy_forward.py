"""A pure-numpy DEFCoN forward pass, independent of Keras, to check the model."""

import numpy as np


def conv_same(x, kernel, bias, stride):
    """TensorFlow 'same' convolution. x: (H, W, C); kernel: (kh, kw, C, F)."""
    kh, kw = kernel.shape[:2]
    height, width = x.shape[:2]
    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_h = max((out_h - 1) * stride + kh - height, 0)
    pad_w = max((out_w - 1) * stride + kw - width, 0)
    padded = np.pad(x, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    out = np.zeros((out_h, out_w, kernel.shape[3]), np.float64)
    for a in range(kh):
        for b in range(kw):
            window = padded[a : a + stride * out_h : stride, b : b + stride * out_w : stride]
            out += window @ kernel[a, b]
    return out + (0 if bias is None else bias)


def deconv_same(x, kernel, bias, stride):
    """TensorFlow 'same' transposed convolution. kernel: (kh, kw, F, C)."""
    kh, kw = kernel.shape[:2]
    height, width = x.shape[:2]
    out_h, out_w = height * stride, width * stride
    pad_top = max(kh - stride, 0) // 2
    pad_left = max(kw - stride, 0) // 2
    big = np.zeros((out_h + kh, out_w + kw, kernel.shape[2]), np.float64)
    for a in range(kh):
        for b in range(kw):
            contribution = x @ kernel[a, b].T
            big[a : a + stride * height : stride, b : b + stride * width : stride] += contribution
    return big[pad_top : pad_top + out_h, pad_left : pad_left + out_w] + bias


def relu(x):
    return np.maximum(x, 0)


def forward(weights, frame):
    """Density map of one frame (H, W) given weights {layer: [kernel, bias?]}."""
    x = frame.astype(np.float64)[..., None]
    span = x.max() - x.min()
    x = (x - x.min()) / span if span > 0 else np.zeros_like(x)
    for name, stride in (
        ("conv_seg_1", 1),
        ("conv_stride_1", 2),
        ("conv_seg_2", 1),
        ("conv_stride_2", 2),
        ("conv_seg_3", 1),
    ):
        x = relu(conv_same(x, *weights[name], stride))
    x = relu(deconv_same(x, *weights["deconv_seg_1"], 2))
    x = relu(deconv_same(x, *weights["decon_seg_2"], 2))
    x = 1 / (1 + np.exp(-conv_same(x, weights["seg"][0], None, 1)))
    for name, stride in (("conv_1", 1), ("conv_2", 2), ("conv_3", 1), ("conv_4", 2), ("conv_5", 1)):
        x = relu(conv_same(x, *weights[name], stride))
    x = relu(deconv_same(x, *weights["deconv_1"], 2))
    x = relu(deconv_same(x, *weights["deconv_2"], 2))
    return conv_same(x, weights["density"][0], None, 1)[..., 0]
