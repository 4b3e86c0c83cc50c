"""Data-parallel training on several devices, as ``[General] Devices`` asks.

Every device holds a copy of the network and trains on its share of each
batch of ``BatchSize`` frames; gradients are averaged over the whole batch, so
the result matches single-device training up to the order of float sums.
TensorFlow uses ``tf.distribute.MirroredStrategy``; JAX Keras' distribution
API (``keras.distribution.DataParallel``), which shards every batch evenly:
there ``BatchSize`` must be a multiple of the device count, and a pass's last,
shorter batch is cut to a multiple of it (:class:`EvenBatches`).
"""

import contextlib

from .backends import configured_backend
from .errors import ConfigError


def training_devices(config):
    """The devices to train on, as ``[General] Devices`` asks.

    ``Devices`` is 1, a number of devices, or 'all': every device of the
    backend's default platform (its GPUs, or its CPU devices when it has none).

    Parameters
    ----------
    config : TrainingConfig

    Returns
    -------
    list of str or None
        Device names (TensorFlow: logical device names; JAX: ``'gpu:0'`` ...),
        or None for single-device training (``1``, or ``all`` with one device).

    Raises
    ------
    ConfigError
        Fewer devices exist than asked, the backend is neither TensorFlow nor
        JAX, or (JAX) a ``BatchSize`` is not a multiple of the device count.
    """
    requested, config_file = config.devices, config.config_file
    if requested == 1:
        return None
    backend = configured_backend()
    if backend not in ("tensorflow", "jax"):
        raise ConfigError(
            f"{config_file}: [General] Devices = {requested}: training on several devices "
            f"needs KERAS_BACKEND=tensorflow or jax (Keras runs on {backend}); use Devices = 1"
        )
    names = _default_platform_devices(backend)
    if requested != "all" and requested > len(names):
        raise ConfigError(
            f"{config_file}: [General] Devices = {requested}, but {backend} sees "
            f"{len(names)} device(s) on its default platform ({', '.join(names)})"
        )
    chosen = names if requested == "all" else names[:requested]
    if len(chosen) == 1:
        return None
    for section, stage in (("SegNet", config.seg), ("DensityNet", config.density)):
        if backend == "jax" and stage.batchsize % len(chosen):
            raise ConfigError(
                f"{config_file}: [{section}] BatchSize = {stage.batchsize}: on JAX it must be "
                f"a multiple of the {len(chosen)} devices training (Devices = {requested})"
            )
    return chosen


def _default_platform_devices(backend):
    """Names of the backend's GPUs, or of its CPU devices when it has no GPU."""
    if backend == "tensorflow":
        import tensorflow as tf

        # Logical devices: virtual devices split from one CPU or GPU count too.
        return [d.name for d in tf.config.list_logical_devices("GPU")] or [
            d.name for d in tf.config.list_logical_devices("CPU")
        ]
    import jax

    return [f"{d.platform}:{d.id}" for d in jax.devices()]


def training_scope(devices):
    """A context in which models are built, compiled and fitted on ``devices``.

    Parameters
    ----------
    devices : list of str or None
        From :func:`training_devices`; None is a context that changes nothing.

    Returns
    -------
    context manager
        TensorFlow: ``MirroredStrategy(devices).scope()``; JAX: the scope of
        ``keras.distribution.DataParallel(devices=devices)`` (it sets the
        distribution with ``set_distribution`` and restores the previous one
        on exit).
    """
    if devices is None:
        return contextlib.nullcontext()
    if configured_backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy(devices).scope()
    import keras

    return keras.distribution.DataParallel(devices=devices).scope()


class EvenBatches:
    """Batches cut to a multiple of the device count, for JAX's even sharding.

    Only a pass's last batch can be shorter than ``BatchSize``; it is cut (and
    left out when nothing remains), so fewer frames than devices go unused.

    Parameters
    ----------
    batches : CompactSetBatches
    multiple : int
        The device count.
    """

    def __init__(self, batches, multiple):
        self.batches, self.multiple = batches, multiple

    def __len__(self):
        n_last = (self.batches.stop - self.batches.start) % self.batches.batch_size
        return len(self.batches) - (0 < n_last < self.multiple)

    def __getitem__(self, index):
        if index >= len(self):
            raise IndexError(index)
        x, y = self.batches[index]
        n = len(x) - len(x) % self.multiple
        return x[:n], y[:n]

    def on_epoch_end(self):
        """Reshuffle, as :meth:`CompactSetBatches.on_epoch_end`."""
        self.batches.on_epoch_end()

    def for_fit(self):
        """A ``keras.utils.PyDataset`` of the batches."""
        from .streaming import _py_dataset_class

        return _py_dataset_class()(self)


def even_batches(batches, devices):
    """``batches`` as JAX needs them on ``devices``: an :class:`EvenBatches`, or unchanged.

    TensorFlow splits uneven batches itself; one device needs nothing.
    """
    if devices is None or configured_backend() != "jax":
        return batches
    return EvenBatches(batches, len(devices))
