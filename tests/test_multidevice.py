"""Training on several devices (``[General] Devices``), on two virtual CPU devices.

Device counts are fixed when a backend starts, so each backend trains in a
child process that splits the CPU in two first: TensorFlow with
``tf.config.set_logical_device_configuration``, JAX with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``. The child trains the
same tiny configuration with ``Devices = 1`` and ``Devices = 2`` (fixed seed, no
dropout, no augmentation) and writes what the parent compares.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_CONFIG

from defcon.config import read_config
from defcon.errors import ConfigError
from defcon.networks import FCN

CHILD = """\
import json, os, sys
from pathlib import Path

backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":  # before anything starts TensorFlow's runtime
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import h5py
import keras

from defcon.config import read_config
from defcon.devices import training_devices, training_scope
from defcon.errors import ConfigError
from defcon.networks import FCN
from defcon.train import train

compact, root, text = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with h5py.File(compact, "r") as f:
    frames = f["input/input"][:]
result = {}
for devices in sys.argv[4].split(","):
    folder = root / devices.replace(":", "_")
    folder.mkdir(parents=True)
    lines = text.replace("{devices}", devices.split(":")[0]).splitlines()
    if ":" in devices:  # e.g. 2:0.3 = ValidationSplit 0.3 (frame counts not even)
        lines = [l.replace("0.25", devices.split(":")[1]) for l in lines]
    config = folder / "config.ini"
    config.write_text("\\n".join(lines))
    try:
        names = training_devices(read_config(config))
    except ConfigError as err:
        result[devices] = {"error": str(err)}
        continue
    with training_scope(names):
        if backend == "tensorflow":
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
        else:
            current = keras.distribution.distribution()
            replicas = 1 if current is None else int(current.device_mesh.devices.size)
    restored = (
        not tf.distribute.has_strategy()
        if backend == "tensorflow"
        else keras.distribution.distribution() is None
    )
    out = train(config, verbose=0)
    counts = FCN.from_file(out["model"]).predict(frames, verbose=0).sum(axis=(1, 2, 3))
    result[devices] = {
        "replicas": replicas,
        "restored": restored,
        "model": str(out["model"]),
        "counts": counts.tolist(),
        "history": (folder / "out" / "history.tsv").read_text(),
    }
(root / "result.json").write_text(json.dumps(result))
"""


def _train_in_child(backend, compact_file, root, batch_size, runs):
    """Train ``runs`` (Devices values) in a child with two CPU devices; its result.json."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    if backend == "jax":
        flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags.strip())
    extra = "Devices = {devices}\nDropoutRate = 0\nAugment = false"
    text = TINY_CONFIG.format(training_set=compact_file, extra=extra)
    text = text.replace("BatchSize = 16", f"BatchSize = {batch_size}")
    text = text.replace("NumEpochs = 1", "NumEpochs = 2")  # [SegNet]; [DensityNet] has 2
    args = [str(compact_file), str(root), text, ",".join(runs)]
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads((root / "result.json").read_text())


# TensorFlow: one batch per epoch (72 training frames). With several batches the
# order of frames differs from one device: Keras' fit reads a first batch from a
# separate iterator of the distributed dataset to build the model, which runs the
# generator of CompactSetBatches.dataset() and draws one more shuffle from its
# random generator. Within one batch the order only changes the order of sums.
@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory, compact_file):
    root = tmp_path_factory.mktemp("tensorflow_devices")
    return _train_in_child("tensorflow", compact_file, root, 72, ["1", "2", "3"])


# JAX: several batches per epoch (16 frames; 72 training, 24 validation frames:
# every batch splits evenly), and a split that leaves odd batches (67 + 29 frames).
@pytest.fixture(scope="module")
def jax_runs(tmp_path_factory, compact_file):
    root = tmp_path_factory.mktemp("jax_devices")
    return _train_in_child("jax", compact_file, root, 16, ["1", "2", "3", "2:0.3"])


def _assert_same_training(runs):
    one, two = runs["1"], runs["2"]
    assert (one["replicas"], two["replicas"]) == (1, 2)
    assert one["restored"] and two["restored"]
    # Two devices see the same batches and average the same gradients; only the
    # order of float32 sums differs (about 1e-7 relative in our runs, a few 1e-5
    # on single weights after Adam's steps). 1e-4 catches a wrong batch split,
    # a wrong loss scale (in the history) or frames counted twice (in calibration).
    np.testing.assert_allclose(two["counts"], one["counts"], rtol=1e-4)
    rows = [[line.split("\t") for line in run["history"].split("\n")[1:-1]] for run in (one, two)]
    assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]]
    values = [[float(v) for r in run for v in r[2:] if v != "nan"] for run in rows]
    np.testing.assert_allclose(values[1], values[0], rtol=1e-4)
    # The saved model is a plain Keras model: it loads here, where no strategy was ever set.
    model = FCN.from_file(two["model"])
    assert model.count_params() > 0


def _assert_too_many_devices(runs):
    message = runs["3"]["error"]
    assert "[General] Devices = 3" in message and "sees 2 device(s)" in message


def test_tensorflow_two_devices_train_as_one(tensorflow_runs):
    _assert_same_training(tensorflow_runs)


def test_tensorflow_more_devices_than_exist_is_an_error(tensorflow_runs):
    _assert_too_many_devices(tensorflow_runs)


def test_jax_two_devices_train_as_one(jax_runs):
    _assert_same_training(jax_runs)


def test_jax_more_devices_than_exist_is_an_error(jax_runs):
    _assert_too_many_devices(jax_runs)


def test_jax_cuts_batches_that_do_not_split_evenly(jax_runs):
    uneven = jax_runs["2:0.3"]
    assert uneven["replicas"] == 2 and np.all(np.isfinite(uneven["counts"]))


@pytest.mark.parametrize(
    "value, message",
    [
        ("zero", r"\[General\] Devices: 'zero' is not 'all' or a whole number"),
        ("0", r"\[General\] Devices: '0' must be 'all' or a number >= 1"),
        ("-2", r"\[General\] Devices: '-2' must be 'all' or a number >= 1"),
        ("1.5", r"\[General\] Devices: '1.5' is not 'all' or a whole number"),
    ],
)
def test_devices_must_be_all_or_a_positive_count(compact_file, write_config, value, message):
    config = write_config(compact_file, extra=f"Devices = {value}")
    with pytest.raises(ConfigError, match=message):
        read_config(config)


def test_devices_default_to_one_and_read_all(compact_file, write_config):
    assert read_config(write_config(compact_file)).devices == 1
    assert read_config(write_config(compact_file, extra="Devices = ALL")).devices == "all"
    assert read_config(write_config(compact_file, extra="Devices = 4")).devices == 4


def test_several_devices_on_pytorch_is_a_clear_error(compact_file, write_config, monkeypatch):
    from defcon import devices

    monkeypatch.setattr(devices, "configured_backend", lambda: "torch")
    config = read_config(write_config(compact_file, extra="Devices = 2"))
    with pytest.raises(ConfigError, match="Devices = 2: .* needs KERAS_BACKEND=tensorflow or jax"):
        devices.training_devices(config)
