"""Keras backends: the same counts and a working training on JAX and PyTorch; clear errors.

Keras fixes its backend when first imported, so the other backend runs in a
subprocess: JAX when this process runs on TensorFlow, TensorFlow when it runs
on JAX or PyTorch (``KERAS_BACKEND=torch python -m pytest tests/test_backends.py``).
Training, the export errors and ``info --system`` run on the non-TensorFlow
backend: this one, or JAX when this process runs on TensorFlow.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import TINY_CONFIG

from defcon.backends import configured_backend
from defcon.errors import BackendError, ParameterError
from defcon.networks import FCN

THIS = configured_backend()
OTHER = "jax" if THIS == "tensorflow" else "tensorflow"
#: The backend that trains, and that the exports refuse, in a subprocess.
NON_TF = "jax" if THIS == "tensorflow" else THIS

pytest.importorskip(OTHER, reason=f"{OTHER} is not installed (see docs/guide.md)")

COUNT = """
import json, sys
from defcon.networks import FCN
from defcon.predict import count_tiff, predict_stack
import tifffile
model = FCN.pretrained()
frames = tifffile.imread(sys.argv[1])
result = count_tiff(model, sys.argv[1])
tiled = predict_stack(model, frames, tile_size=16).sum(axis=(1, 2, 3))
print(json.dumps({"counts": result.counts.tolist(), "max": result.max_local_counts.tolist(),
                  "tiled": tiled.tolist()}))
"""


def run_python(code, *args, backend=NON_TF, timeout=240):
    """Run ``code`` in a fresh Python with ``KERAS_BACKEND=backend``; return the process."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def run_defcon(*args, backend=NON_TF):
    return run_python(
        "import sys; from defcon.cli import main; sys.exit(main())", *args, backend=backend
    )


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    """Eight 40 x 56 uint16 frames with 0-14 blobs on a noisy background."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:40, :56]
    stack = rng.normal(100, 6, (8, 40, 56))
    for k in range(8):
        for y, x in rng.uniform(3, (37, 53), (2 * k, 2)):
            stack[k] += 700 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.4**2))
    path = tmp_path_factory.mktemp("backends") / "stack.tif"
    tifffile.imwrite(path, stack.clip(0, 65535).astype(np.uint16), photometric="minisblack")
    return path


def test_shipped_model_counts_are_the_same_on_both_backends(stack_file):
    from defcon.predict import count_tiff, predict_stack

    other = run_python(COUNT, stack_file, backend=OTHER)
    assert other.returncode == 0, other.stderr
    theirs = json.loads(other.stdout.strip().splitlines()[-1])
    model = FCN.pretrained()
    mine = count_tiff(model, stack_file)
    assert mine.counts.sum() > 20  # frames with emitters, so relative errors mean something
    np.testing.assert_allclose(theirs["counts"], mine.counts, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(theirs["max"], mine.max_local_counts, rtol=1e-4, atol=1e-5)
    tiled = predict_stack(model, tifffile.imread(stack_file), tile_size=16).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(theirs["tiled"], mine.counts, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tiled, mine.counts, rtol=1e-4, atol=1e-5)


def test_tiny_training_without_tensorflow_writes_a_model_any_backend_loads(
    tmp_path, compact_file, stack_file
):
    config = tmp_path / "config.ini"
    config.write_text(TINY_CONFIG.format(training_set=compact_file, extra=""))
    trained = run_defcon("--quiet", "train", config, "--device", "cpu")
    assert trained.returncode == 0, trained.stderr
    lines = (tmp_path / "out" / "history.tsv").read_text().splitlines()
    assert [line.split("\t")[1] for line in lines[1:]] == ["seg", "density", "density"]
    model = FCN.from_file(tmp_path / "out" / "tiny.keras")
    density = model.predict_stack(tifffile.imread(stack_file))
    assert density.shape == (8, 40, 56, 1) and np.all(np.isfinite(density))


def test_exports_without_tensorflow_say_they_need_it(tmp_path):
    result = run_defcon("export", "pretrained", "--fiji", tmp_path)
    assert result.returncode == 1 and not (tmp_path / "DEFCoN").exists()
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("defcon export: error: defcon export needs TensorFlow")
    assert "KERAS_BACKEND=tensorflow" in message and f"runs on {NON_TF}" in message
    code = """
from defcon.errors import BackendError
from defcon.export import save_tf1_model
from defcon.networks import FCN
try:
    FCN.pretrained().save_tf_model("unused")
except BackendError as err:
    print(err)
"""
    result = run_python(code)
    assert "TF1 SavedModel export" in result.stdout and "KERAS_BACKEND=tensorflow" in result.stdout


def test_info_system_names_the_backend_and_devices():
    result = run_defcon("info", "--system")
    assert result.returncode == 0, result.stderr
    assert f"backend: {NON_TF} " in result.stdout and "device: cpu" in result.stdout
    assert "bfloat16: " in result.stdout and "Keras " in result.stdout


def test_asking_for_a_missing_gpu_is_a_clear_error(stack_file, tmp_path):
    from defcon.backends import device_scope, list_devices

    if list_devices("gpu"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match="sees no GPU"):
        device_scope("gpu")
    with pytest.raises(ParameterError):
        device_scope("tpu")
    with device_scope("cpu"):
        assert FCN.pretrained().predict_stack(np.zeros((1, 8, 8))).shape == (1, 8, 8, 1)


@pytest.mark.tensorflow_only
def test_exports_need_the_tensorflow_backend_by_name(monkeypatch):
    from defcon import backends

    monkeypatch.setattr(backends, "configured_backend", lambda: "torch")
    with pytest.raises(BackendError, match="runs on torch"):
        backends.require_tensorflow("the ONNX export")


def test_keras_dataset_serves_the_batches_of_the_tf_data_path(compact_file):
    from defcon.streaming import CompactSetBatches, open_compact_set

    with open_compact_set(compact_file) as f:
        a = CompactSetBatches(f, "density", (0, 80), 16, shuffle=True, block_batches=2, seed=3)
        b = CompactSetBatches(f, "density", (0, 80), 16, shuffle=True, block_batches=2, seed=3)
        data = b.keras_dataset()
        assert len(data) == len(a) == 5
        for _ in range(2):  # two epochs: both reshuffle alike
            for i in range(len(a)):
                np.testing.assert_array_equal(data[i][0], a[i][0])
                np.testing.assert_array_equal(data[i][1], a[i][1])
            a.on_epoch_end()
            data.on_epoch_end()
