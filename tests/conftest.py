"""Shared fixtures: small synthetic stacks, training sets and models.

Frames are non-square (24 x 40 or 32 x 48) and seeds fixed. Reference files
from the original DEFCoN projects are read from ``../shared/reference``; tests
that need them skip when the folder is absent.
"""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
#: Why Qt could not be imported ('' when it could, or when pytest-qt is not installed).
QT_IMPORT_ERROR = ""


def reference_file(*parts):
    """Path of a reference file, skipping the test if it is absent."""
    path = REFERENCE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference file {path} not available (the shared/ folder is missing)")
    return path


def pytest_addoption(parser, pluginmanager):
    """Unload pytest-qt when Qt cannot be imported (no libGL.so.1, say).

    pytest-qt imports QtGui when pytest configures, which would stop the whole
    run; this hook runs before that. tests/test_napari.py then skips its viewer
    tests, saying why.
    """
    global QT_IMPORT_ERROR
    if pluginmanager.has_plugin("pytest-qt"):
        try:
            import qtpy.QtWidgets  # noqa: F401
        except ImportError as err:
            pluginmanager.unregister(name="pytest-qt")
            QT_IMPORT_ERROR = str(err)


def pytest_collection_modifyitems(config, items):
    """Skip ``tensorflow_only`` tests when Keras runs on another backend."""
    from defcon.backends import configured_backend

    backend = configured_backend()
    if backend == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"needs the TensorFlow backend (KERAS_BACKEND={backend})")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def original_model_file():
    """The published DEFCoN model (Keras 2.0.8 / TF 1.3 HDF5)."""
    return reference_file("defcon_tf13.h5")


@pytest.fixture(scope="session")
def reference_stack_file():
    """10 frames, 32 x 32, uint16: the DEFCoN-ImageJ test stack."""
    return reference_file("defcon-imagej", "test_data.tif")


def make_ground_truth(n_frames, height, width, per_frame, seed, margin=4.0):
    """Random emitters ``margin`` pixels or more inside every edge.

    Returns
    -------
    pandas.DataFrame with columns frame (1-based), id, x, y, z, brightness.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for frame in range(1, n_frames + 1):
        for _ in range(int(per_frame[frame - 1]) if np.ndim(per_frame) else per_frame):
            rows.append(
                (
                    frame,
                    len(rows),
                    rng.uniform(margin, width - margin),
                    rng.uniform(margin, height - margin),
                    0.0,
                    rng.uniform(300, 3000),
                )
            )
    return pd.DataFrame(rows, columns=["frame", "id", "x", "y", "z", "brightness"])


def render_stack(ground_truth, n_frames, height, width, seed, dtype=np.uint16):
    """A noisy stack with a blob at every emitter, as the given integer dtype."""
    from defcon.groundtruth import density_stack

    rng = np.random.default_rng(seed)
    density = density_stack(
        ground_truth, n_frames, height, width, sigma=1.3, brightness_threshold=None
    )
    image = 100 + 800 * density + rng.normal(0, 5, density.shape)
    return np.clip(image, 0, np.iinfo(dtype).max).astype(dtype)


@pytest.fixture(scope="session")
def sim_files(tmp_path_factory):
    """A 24 x 40 stack of 30 frames with its frame-logger CSV."""
    folder = tmp_path_factory.mktemp("sim")
    n, h, w = 30, 24, 40
    truth = make_ground_truth(n, h, w, per_frame=np.arange(n) % 6, seed=1)
    tifffile.imwrite(folder / "stack.tif", render_stack(truth, n, h, w, seed=2))
    truth.to_csv(folder / "frame_logger.csv", index=False, float_format="%.4f")
    return folder / "stack.tif", folder / "frame_logger.csv"


@pytest.fixture(scope="session")
def compact_file(tmp_path_factory):
    """A shuffled compact set of 96 frames, 32 x 48, from two sources."""
    from defcon.datasets import TrainingSet, compact_set

    folder = tmp_path_factory.mktemp("compact")
    n, h, w = 48, 32, 48
    with TrainingSet(folder / "training.h5") as ts:
        for k in range(2):
            truth = make_ground_truth(n, h, w, per_frame=np.arange(n) % 9, seed=10 + k)
            tifffile.imwrite(folder / f"s{k}.tif", render_stack(truth, n, h, w, seed=20 + k))
            ts.add_dataset(f"s{k}", folder / f"s{k}.tif", truth)
    return compact_set(folder / "training.h5", folder / "compact.h5", shuffle=True, seed=0)


#: The original DEFCoN example config.ini (example/training/), with its training set left open.
ORIGINAL_CONFIG = """\
# Configuration file for training DEFCoN
[General]
# Name of the keras model to save
ModelName = my_trained_model.h5
# Path to the TrainingSet h5 file
TrainingSetPath = {training_set}
# Output directory
OutputDir = trained_models/
# Directory to store the intermediary weights
WeightDir = weights/

[SegNet]
BatchSize = 16
NumEpochs = 1
ValidationSplit = 0.1
AdamLR = 0.001

[DensityNet]
LambdaFactor = 0.01
BatchSize = 16
NumEpochs = 1
ValidationSplit = 0.1
AdamLR = 0.001
"""


TINY_CONFIG = """\
[General]
ModelName = tiny.h5
TrainingSetPath = {training_set}
OutputDir = out/
WeightDir = weights/
Seed = 1
{extra}

[SegNet]
BatchSize = 16
NumEpochs = 1
ValidationSplit = 0.25
AdamLR = 0.001

[DensityNet]
LambdaFactor = 0.01
BatchSize = 16
NumEpochs = 2
ValidationSplit = 0.25
AdamLR = 0.001
"""


@pytest.fixture
def write_config(tmp_path):
    """Write a small training config in tmp_path; returns its path."""

    def write(training_set, extra="", text=None):
        path = tmp_path / "config.ini"
        path.write_text(
            text if text is not None else TINY_CONFIG.format(training_set=training_set, extra=extra)
        )
        return path

    return write


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory, compact_file):
    """One small two-stage training shared by the tests: ``(config, train() result)``.

    Tests read its files and never change them.
    """
    from defcon.train import train

    config = tmp_path_factory.mktemp("tiny_training") / "config.ini"
    config.write_text(TINY_CONFIG.format(training_set=compact_file, extra=""))
    return config, train(config, verbose=0)
