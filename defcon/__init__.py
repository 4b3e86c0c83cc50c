"""defcon: count fluorescent emitters in SMLM stacks with density-estimating FCNs.

The public API is loaded lazily, so ``import defcon`` does not import TensorFlow
until a network is needed.
"""

__version__ = "0.1.0"

__all__ = ["TrainingSet", "compact_set", "FCN", "train", "__version__"]

_LAZY = {
    "TrainingSet": ("defcon.datasets", "TrainingSet"),
    "compact_set": ("defcon.datasets", "compact_set"),
    "FCN": ("defcon.networks", "FCN"),
    "train": ("defcon.train", None),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        module = importlib.import_module(module)
        # defcon.train is a callable module: `defcon.train(config)` trains.
        return module if attr is None else getattr(module, attr)
    raise AttributeError(f"module 'defcon' has no attribute {name!r}")
