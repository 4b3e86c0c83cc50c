"""Batches for Keras straight from a compact HDF5 set, in bounded memory.

Frames are read in blocks of consecutive frames (fast, contiguous HDF5 reads);
each epoch visits the blocks in a new random order and shuffles the frames
inside each block, so memory is bounded by one block whatever the set's size.
"""

import functools
import math

import h5py
import numpy as np

from .datasets import GROUPS, _augment
from .errors import TrainingSetError
from .files import existing_file

#: Targets per training stage: segmentation maps, or density maps.
STAGE_TARGETS = {"seg": "seg_map", "density": "target"}


def open_compact_set(path):
    """Open a compact set and check its layout.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    h5py.File
        Open read-only, with datasets ``input/input``, ``target/target`` and
        ``seg_map/seg_map`` of equal shapes ``(N, H, W, 1)``.

    Raises
    ------
    MissingFileError, TrainingSetError
    """
    path = existing_file(path, "compact training set")
    if not h5py.is_hdf5(path):
        raise TrainingSetError(
            f"{path}: not an HDF5 file (expected a compact set written "
            "by compact_set / `defcon compact`)"
        )
    f = h5py.File(path, "r")
    missing = [f"{g}/{g}" for g in GROUPS if f"{g}/{g}" not in f]
    if missing:
        f.close()
        raise TrainingSetError(
            f"{path}: not a compact set (missing {', '.join(missing)}); run compact_set or "
            "`defcon compact` on the TrainingSet first"
        )
    shapes = {g: f[g][g].shape for g in GROUPS}
    if len(set(shapes.values())) != 1 or len(shapes["input"]) != 4:
        f.close()
        raise TrainingSetError(
            f"{path}: datasets have shapes {shapes}; expected equal (N, H, W, 1)"
        )
    return f


class CompactSetBatches:
    """Batches of ``(input, target)`` from a range of a compact set.

    A sequence of batches (``len``, indexing, ``on_epoch_end`` reshuffles);
    :meth:`dataset` wraps it for ``keras.Model.fit``.

    Parameters
    ----------
    h5file : h5py.File
        An open compact set (see :func:`open_compact_set`).
    stage : {'seg', 'density'}
        Targets are ``seg_map/seg_map`` (as float32) or ``target/target``.
    frames : tuple of int
        ``(start, stop)``: the 0-based range of frames to serve.
    batch_size : int
    shuffle : bool
        Visit blocks in random order and shuffle frames within each block.
    block_batches : int
        Batches per block: memory holds at most one block of frames.
    augment : bool
        Random brightness per input frame (``10**U(-0.5, 1)``, clipped to [0, 1]).
    seed : int, optional

    Each item is ``(x, y)``: float32 arrays of shape ``(batch, H, W, 1)``.
    """

    def __init__(
        self,
        h5file,
        stage,
        frames,
        batch_size,
        shuffle=True,
        block_batches=16,
        augment=False,
        seed=None,
    ):
        self.inputs = h5file["input"]["input"]
        self.targets = h5file[STAGE_TARGETS[stage]][STAGE_TARGETS[stage]]
        self.start, self.stop = frames
        self.batch_size = int(batch_size)
        self.block_frames = self.batch_size * block_batches
        self.shuffle, self.augment = shuffle, augment
        self.rng = np.random.default_rng(seed)
        n_frames = self.stop - self.start
        self._block_order = np.arange(math.ceil(n_frames / self.block_frames))
        # A short last block stays last, so every earlier position holds
        # exactly block_batches batches and indices map to blocks arithmetically.
        self._n_full_blocks = n_frames // self.block_frames
        self._cached = (None, None)
        self.on_epoch_end()

    def __len__(self):
        return math.ceil((self.stop - self.start) / self.batch_size)

    def dataset(self):
        """A ``tf.data.Dataset`` of one pass over the batches, reshuffled per pass.

        The next batches are read while the current one trains (prefetch of 2,
        one reader thread). tf.data's autotuning is off: on 2 cores it made
        training from HDF5 run at half speed in about half of the runs.
        """
        import tensorflow as tf

        def one_pass():
            for index in range(len(self)):
                yield self[index]
            self.on_epoch_end()

        shape = (None,) + tuple(self.inputs.shape[1:])
        spec = (tf.TensorSpec(shape, tf.float32), tf.TensorSpec(shape, tf.float32))
        options = tf.data.Options()
        options.autotune.enabled = False
        options.threading.private_threadpool_size = 1
        data = tf.data.Dataset.from_generator(one_pass, output_signature=spec)
        data = data.apply(tf.data.experimental.assert_cardinality(len(self)))
        return data.prefetch(2).with_options(options)

    def keras_dataset(self):
        """A ``keras.utils.PyDataset`` of the batches, for ``fit`` on any Keras backend.

        One pass per epoch, reshuffled by Keras' ``on_epoch_end``; batches are
        read in the training thread (one block read per ``block_batches``
        batches, a few % of a training step's time on 64 x 64 frames).
        """
        return _py_dataset_class()(self)

    def for_fit(self):
        """The batches for ``keras.Model.fit``.

        :meth:`dataset` (tf.data) on the TensorFlow backend, else :meth:`keras_dataset`.
        """
        from .backends import is_tensorflow

        return self.dataset() if is_tensorflow() else self.keras_dataset()

    def _block_length(self, block):
        first = self.start + block * self.block_frames
        return min(self.block_frames, self.stop - first)

    def on_epoch_end(self):
        if self.shuffle:
            self.rng.shuffle(self._block_order[: self._n_full_blocks])
        self._cached = (None, None)

    def _load_block(self, block):
        first = self.start + block * self.block_frames
        last = first + self._block_length(block)
        x = self.inputs[first:last].astype(np.float32)
        y = self.targets[first:last].astype(np.float32)
        if self.shuffle:
            order = self.rng.permutation(len(x))
            x, y = x[order], y[order]
        if self.augment:
            x = _augment(x, self.rng)
        return x, y

    def __getitem__(self, index):
        batches_per_block = self.block_frames // self.batch_size
        position, within = divmod(index, batches_per_block)
        if position >= len(self._block_order):
            raise IndexError(index)
        block = self._block_order[position]
        if self._cached[0] != block:
            self._cached = (block, self._load_block(block))
        x, y = self._cached[1]
        lo = within * self.batch_size
        if lo >= len(x):
            raise IndexError(index)
        return x[lo : lo + self.batch_size], y[lo : lo + self.batch_size]


@functools.cache
def _py_dataset_class():
    """The PyDataset class of :meth:`CompactSetBatches.keras_dataset`, made when first used.

    Keras is imported only then: this module is also read by configuration
    checks that need no network.
    """
    import keras

    class CompactSetPyDataset(keras.utils.PyDataset):
        """``CompactSetBatches`` as a ``keras.utils.PyDataset`` (one worker: blocks are cached)."""

        def __init__(self, batches):
            super().__init__(workers=1, use_multiprocessing=False)
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, index):
            return self.batches[index]

        def on_epoch_end(self):
            self.batches.on_epoch_end()

    return CompactSetPyDataset
