"""The original DEFCoN's documented calls, replayed: each runs as it did or fails loudly.

Every call of the original README and of its notebooks
(``examples/quickstart_prediction.ipynb``, ``examples/quickstart_training.ipynb``,
LEB-EPFL/DEFCoN) either behaves as in DEFCoN or raises a
:class:`~defcon.errors.DefconError` whose message names what to write instead:
never a silent difference. docs/guide.md ("Coming from the original DEFCoN")
lists them.
"""

import importlib.resources
import logging

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from conftest import ORIGINAL_CONFIG, make_ground_truth, reference_file, render_stack

from defcon import models
from defcon.errors import (
    ConfigError,
    DefconError,
    MissingFileError,
    ModelFileError,
    TrainingSetError,
)
from defcon.export import tf1_op_types
from defcon.networks import FCN, PUBLISHED_ENV, PUBLISHED_URL

ORIGINAL_LAYER_NAMES = [  # the notebook's model.summary() of the density network
    "input",
    "hist_norm",
    "conv_seg_1",
    "conv_stride_1",
    "conv_seg_2",
    "conv_stride_2",
    "conv_seg_3",
    "dropout_seg",
    "deconv_seg_1",
    "decon_seg_2",
    "seg",
    "conv_1",
    "conv_2",
    "conv_3",
    "conv_4",
    "conv_5",
    "dropout",
    "deconv_1",
    "deconv_2",
    "density",
]


def run_tf1(export_dir, x):
    """Run a TF1 SavedModel as DEFCoN-ImageJ does (tag serve, input_tensor -> output_tensor)."""
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], str(export_dir))
        return session.run("output_tensor:0", {"input_tensor:0": x})


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory):
    """Five 32 x 48 uint16 frames with blobs."""
    truth = make_ground_truth(5, 32, 48, per_frame=6, seed=4)
    path = tmp_path_factory.mktemp("compat") / "generated_stack.tif"
    tifffile.imwrite(path, render_stack(truth, 5, 32, 48, seed=5))
    return path


# ------------------------------------------------------------------ README / prediction notebook
def test_readme_resource_lookup_of_defcon_tf13_fails_naming_fcn_published(monkeypatch):
    monkeypatch.delenv(PUBLISHED_ENV, raising=False)
    defcon_model = importlib.resources.files("defcon.resources") / "defcon_tf13.h5"
    assert not defcon_model.is_file()  # the published model is not shipped
    with pytest.raises(MissingFileError, match=r"FCN\.published.*" + PUBLISHED_ENV) as err:
        FCN.from_file(defcon_model)
    assert PUBLISHED_URL in str(err.value)
    with pytest.raises(ModelFileError, match=PUBLISHED_ENV) as err:
        FCN.published()
    assert PUBLISHED_URL in str(err.value) and "BSD-3" in str(err.value)


def test_readme_pkg_resources_lookup_fails_naming_fcn_published():
    pkg_resources = pytest.importorskip("pkg_resources")
    defcon_model = pkg_resources.resource_filename("defcon.resources", "defcon_tf13.h5")
    with pytest.raises(MissingFileError, match=r"FCN\.published"):
        FCN.from_file(defcon_model)


def test_published_model_from_path_or_environment(original_model_file, monkeypatch, tmp_path):
    monkeypatch.setenv(PUBLISHED_ENV, str(original_model_file))
    model = FCN.published()
    assert model.output_kind == "density"
    assert [layer.name for layer in model.layers] == ORIGINAL_LAYER_NAMES
    direct = FCN.published(original_model_file)
    x = np.random.default_rng(0).random((1, 32, 48, 1), np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), direct.predict(x, verbose=0))
    monkeypatch.setenv(PUBLISHED_ENV, str(tmp_path / "nowhere.h5"))
    with pytest.raises(MissingFileError, match=f"nowhere.h5 \\(from {PUBLISHED_ENV}\\)"):
        FCN.published()


def test_readme_predict_tiff_returns_density_maps_as_the_original(stack_file):
    model = FCN(output="density", seed=0)
    y_pred = model.predict_tiff(str(stack_file))
    data = tifffile.imread(stack_file)[..., None] / np.float32(65535)  # DEFCoN's tiff_to_array
    assert y_pred.shape == (5, 32, 48, 1)
    np.testing.assert_allclose(y_pred, model.predict(data, verbose=0), atol=1e-5)
    # Keras predict options the original forwarded.
    np.testing.assert_array_equal(model.predict_tiff(stack_file, verbose=0), y_pred)
    np.testing.assert_allclose(
        model.predict_tiff(stack_file, batch_size=2, verbose=1), y_pred, atol=1e-6
    )
    with pytest.raises(ConfigError, match=r"steps.*index="):
        model.predict_tiff(stack_file, steps=1)


def test_datasets_tiff_to_array_scales_by_the_dtype_maximum(tmp_path):
    from defcon.datasets import tiff_to_array

    data16 = np.arange(2 * 4 * 8, dtype=np.uint16).reshape(2, 4, 8) * 1000
    tifffile.imwrite(tmp_path / "a.tif", data16)
    tifffile.imwrite(tmp_path / "b.tif", data16[0].astype(np.uint8))
    a = tiff_to_array(tmp_path / "a.tif")
    assert a.shape == (2, 4, 8, 1) and a.dtype.kind == "f"
    np.testing.assert_allclose(a[..., 0], data16 / 65535, rtol=1e-6)
    np.testing.assert_array_equal(
        tiff_to_array(tmp_path / "a.tif", normalize=False)[..., 0], data16
    )
    b = tiff_to_array(str(tmp_path / "b.tif"))
    assert b.shape == (1, 4, 8, 1)
    np.testing.assert_allclose(b[0, ..., 0], data16[0].astype(np.uint8) / 255, rtol=1e-6)


# ------------------------------------------------------------------ training notebook: data
def test_training_notebook_training_set_and_compact_set(tmp_path, capsys):
    from defcon.datasets import TrainingSet, compact_set

    files = {}
    for name, n in (("first_dataset", 12), ("second_dataset", 8)):
        truth = make_ground_truth(n, 24, 40, per_frame=3, seed=n)
        files[name] = (tmp_path / f"{name}.tif", tmp_path / f"{name}.csv")
        tifffile.imwrite(files[name][0], render_stack(truth, n, 24, 40, seed=n + 1))
        truth.to_csv(files[name][1], index=False)
    h5_path = tmp_path / "training" / "my_training_set.h5"
    h5_path.parent.mkdir()
    my_training_set = TrainingSet(h5_path, "w")
    my_training_set.summary()
    for name, (input_file, ground_truth) in files.items():
        my_training_set.add_dataset(
            name=name, input_file=str(input_file), ground_truth=str(ground_truth)
        )
    my_training_set.summary()
    assert "first_dataset: shape = (12, 24, 40, 1)" in capsys.readouterr().out
    assert my_training_set.lengths() == [12, 8]  # a list, in the order of ts['input']
    assert [len(my_training_set["input/" + d]) for d in my_training_set["input"]] == [12, 8]
    my_training_set.close()

    my_training_set = TrainingSet(h5_path, "r")
    h5_path_compact = str(tmp_path / "training" / "my_compact_set.h5")
    compact_set(my_training_set, output_file=h5_path_compact, shuffle=True, augment=True)
    my_training_set.close()
    with TrainingSet(h5_path_compact) as my_compact_set:
        my_compact_set.summary()
        assert my_compact_set.lengths() == [20]
    assert "input: shape = (20, 24, 40, 1)" in capsys.readouterr().out
    with h5py.File(h5_path_compact, "r") as f:
        assert f["input/input"][15, :, :, :].shape == (24, 40, 1)
        assert f["seg_map/seg_map"].shape == f["target/target"].shape == (20, 24, 40, 1)


def test_compact_set_temporal_is_refused_not_ignored(compact_file, tmp_path):
    from defcon.datasets import TrainingSet, compact_set

    source = tmp_path / "training.h5"
    with TrainingSet(source) as ts:
        ts.add_input(compact_file, name="frames", input_dataset="input/input")
        ts.add_target(compact_file, "target/target", name="frames")
    with pytest.raises(TrainingSetError, match=r"temporal=True.*not supported.*temporal=False"):
        compact_set(source, tmp_path / "c.h5", temporal=True)
    with pytest.raises(TrainingSetError, match="fifth argument was temporal"):
        compact_set(source, tmp_path / "c.h5", True, True, True)  # DEFCoN's positional order
    assert not (tmp_path / "c.h5").exists()
    compact_set(source, tmp_path / "c.h5", shuffle=True, temporal=False)
    assert h5py.File(tmp_path / "c.h5", "r")["input/input"].shape == (96, 32, 48, 1)


# ------------------------------------------------------------------ training notebook: training
def test_training_notebook_train_predict_and_serve(compact_file, stack_file, tmp_path, caplog):
    from defcon import training

    folder = tmp_path / "training"
    folder.mkdir()
    (folder / "my_compact_set.h5").write_bytes(compact_file.read_bytes())
    config_file = folder / "config.ini"
    config_file.write_text(ORIGINAL_CONFIG.format(training_set="./my_compact_set.h5"))
    with caplog.at_level(logging.WARNING, logger="defcon.train"):
        training.train(str(config_file), verbose=0)
    keras_file = folder / "trained_models" / "my_trained_model.keras"
    assert keras_file.is_file()
    assert any(
        "my_trained_model.h5" in r.getMessage() and str(keras_file) in r.getMessage()
        for r in caplog.records
    )
    # The notebook's next cell names the .h5: the error names the file to load instead.
    with pytest.raises(MissingFileError, match=r"my_trained_model\.keras"):
        FCN.from_file(str(folder / "trained_models" / "my_trained_model.h5"))

    model = FCN.from_file(keras_file)
    with h5py.File(compact_file, "r") as f:
        array = np.array(f["input/input"][:4])
    y_pred_array = model.predict(array)
    assert y_pred_array.shape == (4, 32, 48, 1)
    y_pred_tiff = model.predict_tiff(str(stack_file))
    assert y_pred_tiff.shape == (5, 32, 48, 1)

    # Serving: the density model, then the max-count model, from the same object.
    model.save_tf_model(str(tmp_path / "serving" / "tf_density_count"))
    x = tifffile.imread(stack_file).astype(np.float32)[..., None]
    np.testing.assert_allclose(
        run_tf1(tmp_path / "serving" / "tf_density_count", x), y_pred_tiff, atol=1e-4
    )
    assert model.density_to_max_count(pool=(7, 7)) is model.max_count_model
    model.summary()
    model.save_tf_model(str(tmp_path / "serving" / "tf_max_count"))
    served = run_tf1(tmp_path / "serving" / "tf_max_count", x)
    assert served.shape == (5, 1)
    np.testing.assert_allclose(served, model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


def test_training_architecture_argument_is_refused_naming_the_fix(tmp_path):
    from defcon import training

    with pytest.raises(ConfigError, match=r"architecture=.*defcon\.train\.train\(config_file\)"):
        training.train(tmp_path / "config.ini", architecture=lambda output: None)
    # DEFCoN's own architecture function is what defcon trains: accepted.
    with pytest.raises(MissingFileError, match="config.ini"):
        training.train(tmp_path / "config.ini", architecture=models.DEFCoN)


# ------------------------------------------------------------------ FCN and models
def test_density_to_max_count_converts_the_object_as_the_original(tmp_path, stack_file):
    model = FCN(output="density", seed=0)
    n_weights = len(model.weights)
    x = tifffile.imread(stack_file).astype(np.float32)[..., None]
    density = model.predict(x, verbose=0)
    converted = model.density_to_max_count()
    assert converted.output_kind == "max_count" and model.max_count_model is converted
    assert len(model.weights) == n_weights  # no stale layers tracked on the object
    # predict and predict_tiff give max local counts, (N, 1), as the original's.
    counts = model.predict(x, verbose=0)
    assert counts.shape == (5, 1)
    np.testing.assert_allclose(counts, converted.predict(x, verbose=0))
    from defcon.predict import max_local_count

    np.testing.assert_allclose(counts[:, 0], max_local_count(density), rtol=1e-5, atol=1e-5)
    tiff_counts = model.predict_tiff(stack_file)
    assert tiff_counts.shape == (5, 1)
    np.testing.assert_allclose(tiff_counts[:, 0], max_local_count(density), rtol=1e-4, atol=1e-4)
    # Keras' save too; another conversion replaces the first.
    model.save(tmp_path / "max.keras")
    assert FCN.from_file(tmp_path / "max.keras").output_kind == "max_count"
    model.density_to_max_count(pool=(5, 5))
    assert model.max_count_model.get_layer("max_local_count").pool_size == (5, 5)
    # save_tf_model exports the max-count model, with the plugin's op types plus AvgPool.
    model.density_to_max_count()
    out = model.save_tf_model(tmp_path / "tf_max_count")
    np.testing.assert_allclose(run_tf1(out, x), counts, rtol=1e-5, atol=1e-5)
    ops = tf1_op_types(out)
    assert "AvgPool" in ops
    reference = tf1_op_types(reference_file("defcon-imagej", "tf_density_count"))
    assert ops <= reference | {"AvgPool"}, f"extra ops: {ops - reference}"


def test_with_max_count_leaves_the_density_model_unchanged():
    model = FCN(output="density", seed=0)
    max_model = model.with_max_count()
    assert max_model.output_kind == "max_count" and model.max_count_model is None
    assert model.predict(np.zeros((1, 16, 16, 1), np.float32), verbose=0).shape == (1, 16, 16, 1)
    with pytest.raises(DefconError, match="segmentation network"):
        FCN(output="seg").density_to_max_count()


def test_models_defcon_returns_the_network_with_the_original_layers():
    density = models.DEFCoN()
    assert isinstance(density, FCN) and density.output_kind == "density"
    assert [layer.name for layer in density.layers] == ORIGINAL_LAYER_NAMES
    frozen = {layer.name for layer in density.layers if layer.weights and not layer.trainable}
    assert frozen == set(models.SEGMENTATION_LAYER_NAMES)  # as DEFCoN's layers[2:11]
    seg = models.DEFCoN(input_size=(None, None, 1), output="seg")
    assert [layer.name for layer in seg.layers] == ORIGINAL_LAYER_NAMES[:11]
    assert all(layer.trainable for layer in seg.layers)
    with pytest.raises(ConfigError, match=r"FCN\(output='both'\)"):
        models.DEFCoN(output="both")
    with pytest.raises(ConfigError, match="drop input_size"):
        models.DEFCoN(input_size=(64, 64, 1))
    with pytest.raises(ConfigError, match=r"FCN\.from_file"):
        FCN(models.DEFCoN(output="seg"))  # DEFCoN's FCN(model) wrapper
