import h5py
import keras
import numpy as np
import numpy_forward
import pytest
import tifffile

from defcon.errors import MissingFileError, ModelFileError, UnsupportedFileError
from defcon.models import DensityLoss, HistNorm
from defcon.networks import FCN


def _weights(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


@pytest.fixture(scope="module")
def original(original_model_file):
    return FCN.from_file(original_model_file)


def test_architecture_has_the_original_layer_names_and_shapes():
    model = FCN(output="both", seed=0)
    names = [layer.name for layer in model.layers]
    assert names[:3] == ["input", "hist_norm", "conv_seg_1"]
    assert names[-1] == "density" and "decon_seg_2" in names and "dropout_seg" in names
    assert model.count_params() == 112_912
    out = model.predict(np.zeros((1, 36, 20, 1), np.float32), verbose=0)
    assert out["seg"].shape == out["density"].shape == (1, 36, 20, 1)


def test_original_model_loads_and_matches_a_numpy_forward_pass(original):
    assert original.output_kind == "density"
    frames = np.random.default_rng(0).random((2, 20, 28, 1)).astype(np.float32) * 500
    keras_out = original.predict(frames, verbose=0)[..., 0]
    weights = _weights(original)
    for frame, out in zip(frames, keras_out):
        np.testing.assert_allclose(out, numpy_forward.forward(weights, frame[..., 0]), atol=1e-5)


def test_original_model_weights_are_read_by_layer_name(original, original_model_file):
    with h5py.File(original_model_file, "r") as f:
        stored = f["model_weights/conv_5/conv_5_4/kernel:0"][()]
    np.testing.assert_array_equal(original.get_layer("conv_5").get_weights()[0], stored)


def test_original_model_on_reference_stack_counts_plausibly(original, reference_stack_file):
    frames = tifffile.imread(reference_stack_file).astype(np.float32)[..., None]
    counts = original.predict(frames, verbose=0).sum(axis=(1, 2, 3))
    assert counts.shape == (10,) and np.all((counts > 1) & (counts < 10))


def test_keras_file_round_trip_in_safe_mode(tmp_path, original):
    path = tmp_path / "m.keras"
    original.save(path)
    loaded = FCN.from_file(path)
    assert isinstance(loaded, FCN) and loaded.output_kind == "density"
    x = np.random.default_rng(1).random((1, 16, 24, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), original.predict(x, verbose=0))


@pytest.mark.parametrize("output", ["seg", "density"])
def test_keras3_weights_files_load(tmp_path, output):
    model = FCN(output=output, seed=2)
    model.save_weights(tmp_path / "w.weights.h5")
    loaded = FCN.from_file(tmp_path / "w.weights.h5")
    assert loaded.output_kind == output
    for name, arrays in _weights(model).items():
        for a, b in zip(arrays, loaded.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_keras2_style_weights_only_file_loads(tmp_path, original, original_model_file):
    # Keras 2 save_weights: the model_weights group alone at the file's root.
    path = tmp_path / "keras2.weights.h5"
    with h5py.File(original_model_file, "r") as src, h5py.File(path, "w") as dst:
        for key in src["model_weights"]:
            src.copy(src["model_weights"][key], dst, key)
        dst.attrs.update(src["model_weights"].attrs)
    loaded = FCN.from_file(path)
    for name, arrays in _weights(original).items():
        np.testing.assert_array_equal(loaded.get_layer(name).get_weights()[0], arrays[0])


def test_with_output_and_seg_model(original):
    seg = original.with_output("seg")
    both = original.with_output("both")
    x = np.random.default_rng(2).random((1, 16, 16, 1)).astype(np.float32)
    out = both.predict(x, verbose=0)
    np.testing.assert_allclose(out["seg"], seg.predict(x, verbose=0), atol=1e-6)
    assert 0 <= out["seg"].min() and out["seg"].max() <= 1


def test_stored_lambda_is_never_unmarshalled(tmp_path, original_model_file):
    # Replace the marshalled hist_norm code with garbage: loading must not care.
    path = tmp_path / "tampered.h5"
    path.write_bytes(original_model_file.read_bytes())
    with h5py.File(path, "a") as f:
        f.attrs["model_config"] = f.attrs["model_config"].replace("hist_norm", "evil_code")
    assert FCN.from_file(path).output_kind == "density"


def test_bad_model_files(tmp_path):
    with pytest.raises(MissingFileError, match="absent.keras"):
        FCN.from_file(tmp_path / "absent.keras")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UnsupportedFileError, match=r"notes\.txt: not a model file"):
        FCN.from_file(tmp_path / "notes.txt")
    with h5py.File(tmp_path / "data.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ModelFileError, match=r"data\.h5: an HDF5 file, but not a Keras"):
        FCN.from_file(tmp_path / "data.h5")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(ModelFileError, match=r"broken\.keras: cannot load"):
        FCN.from_file(tmp_path / "broken.keras")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    other.save(tmp_path / "other.keras")
    with pytest.raises(ModelFileError, match=r"other\.keras: holds a Sequential"):
        FCN.from_file(tmp_path / "other.keras")


def test_hist_norm_flat_frame_gives_zeros_not_nan():
    flat = np.full((2, 8, 12, 1), 7.0, np.float32)
    out = keras.ops.convert_to_numpy(HistNorm()(flat))
    np.testing.assert_array_equal(out, 0.0)
    ramp = np.arange(96, dtype=np.float32).reshape(1, 8, 12, 1)
    out = keras.ops.convert_to_numpy(HistNorm()(ramp))
    assert out.min() == 0.0 and out.max() == 1.0
    density = FCN(seed=0).predict(flat, verbose=0)
    assert np.isfinite(density).all()


def test_density_loss_is_pixel_plus_lambda_count():
    rng = np.random.default_rng(3)
    y_true = rng.random((3, 8, 12, 1)).astype(np.float32)
    y_pred = rng.random((3, 8, 12, 1)).astype(np.float32)
    pixel = ((y_true - y_pred) ** 2).sum(axis=(1, 2, 3))
    count = (y_true.sum(axis=(1, 2, 3)) - y_pred.sum(axis=(1, 2, 3))) ** 2
    loss = float(DensityLoss(0.01)(y_true, y_pred))
    assert loss == pytest.approx(np.mean(pixel + 0.01 * count), rel=1e-5)
    # Frame weighting: each frame's loss divided by 1 + n / scale (n its true count).
    weight = 1 / (1 + y_true.sum(axis=(1, 2, 3)) / 20)
    weighted = float(DensityLoss(0.01, frame_weight_scale=20)(y_true, y_pred))
    assert weighted == pytest.approx(np.mean(weight * (pixel + 0.01 * count)), rel=1e-5)
    assert DensityLoss.from_config(DensityLoss(0.1, 5).get_config()).frame_weight_scale == 5


def test_pretrained_model_counts_simulated_emitters():
    from defcon.groundtruth import count_per_frame
    from defcon.simulate import simulate_stack

    model = FCN.pretrained()
    assert model.output_kind == "density"
    stack, truth = simulate_stack(120, 64, 48, seed=7, density_sweep=True)
    counts = model.predict_stack(stack)[..., 0].sum(axis=(1, 2))
    expected = count_per_frame(truth, 120, height=64, width=48)
    assert expected.max() >= 30
    assert np.abs(counts - expected).sum() / expected.sum() < 0.12


@pytest.mark.parametrize("output", ["density", "both"])
def test_keras_predict_keeps_any_frame_size(output):
    from defcon.predict import predict_stack

    model = FCN(output=output, seed=0)
    frames = np.random.default_rng(0).random((2, 30, 45, 1)).astype(np.float32)
    maps = model.predict(frames, verbose=0)
    maps = list(maps.values()) if isinstance(maps, dict) else [maps]
    assert [m.shape for m in maps] == [(2, 30, 45, 1)] * len(maps)
    if output == "density":
        np.testing.assert_allclose(maps[0], predict_stack(model, frames[..., 0]), atol=1e-5)
