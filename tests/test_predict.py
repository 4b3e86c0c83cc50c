"""Inference: shapes, padding, chunking, tiling, outputs, counts and errors."""

import h5py
import numpy as np
import pytest
import tifffile
from conftest import REFERENCE

from defcon import predict as P
from defcon.errors import (
    DefconError,
    MissingFileError,
    ModelKindError,
    ShapeMismatchError,
    UnsupportedFileError,
)
from defcon.networks import FCN


@pytest.fixture(scope="module")
def model():
    """The published DEFCoN model, or the shipped model fine-tuned from it when
    shared/ is absent (random weights make bfloat16 counts meaningless)."""
    path = REFERENCE / "defcon_tf13.h5"
    return FCN.from_file(path) if path.exists() else FCN.pretrained("defcon-sim-2026a")


@pytest.fixture(scope="module")
def frames():
    """Six 30 x 45 uint16 frames with blobs on a noisy background."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:30, :45]
    stack = rng.normal(100, 5, (6, 30, 45))
    for k in range(6):
        for _ in range(k + 1):
            y, x = rng.uniform(3, 27), rng.uniform(3, 42)
            stack[k] += 600 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
    return stack.clip(0, 65535).astype(np.uint16)


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory, frames):
    path = tmp_path_factory.mktemp("predict") / "stack.tif"
    tifffile.imwrite(path, frames)
    return path


@pytest.fixture(scope="module")
def density(model, frames):
    return P.predict_stack(model, frames)


def _blobs(shape, seed, n=12):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(100, 5, shape)
    for y, x in rng.uniform(2, np.array(shape) - 2, (n, 2)):
        image += 500 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3**2))
    return image.astype(np.float32)


# --------------------------------------------------------------------- shapes
@pytest.mark.parametrize(
    "shape, expected",
    [
        ((30, 45), (1, 30, 45, 1)),
        ((1, 37), (1, 1, 37, 1)),
        ((3, 30, 45), (3, 30, 45, 1)),
        ((2, 13, 9, 1), (2, 13, 9, 1)),
        ((1, 64, 48, 1), (1, 64, 48, 1)),
    ],
)
def test_density_has_the_input_shape(model, shape, expected):
    out = P.predict_stack(model, np.random.default_rng(0).random(shape) * 1000)
    assert out.shape == expected and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_fast_path_equals_keras_predict(model):
    x = np.stack([_blobs((64, 48), seed) for seed in range(3)])[..., None]
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(P.predict_stack(model, x), expected, atol=1e-5)
    seg = model.with_output("seg")
    np.testing.assert_allclose(P.predict_stack(seg, x), seg.predict(x, verbose=0), atol=1e-5)


def test_padding_does_not_change_the_density_away_from_the_border(model):
    image = _blobs((66, 70), 2)
    image[5, 5], image[30, 30] = 50, 2000  # same min and max in the crop: same normalisation
    padded = P.predict_stack(model, image)[0, ..., 0]  # padded to 68 x 72 inside
    crop = P.predict_stack(model, image[:64, :68])[0, ..., 0]  # multiple of 4: no padding
    inner = slice(0, 64 - 36), slice(0, 68 - 36)
    np.testing.assert_allclose(padded[inner], crop[inner], atol=1e-5)


def test_raw_and_scaled_inputs_give_the_same_density(model, frames, density):
    scaled = frames.astype(np.float32) / 65535
    np.testing.assert_allclose(P.predict_stack(model, scaled), density, atol=1e-5)


def test_batches_and_tiles_give_the_whole_result(model, frames, density):
    np.testing.assert_allclose(P.predict_stack(model, frames, batch_size=4), density, atol=1e-6)
    big = _blobs((150, 170), 4, n=40)
    whole = P.predict_stack(model, big)
    np.testing.assert_allclose(P.predict_stack(model, big, tile_size=32), whole, atol=1e-5)
    np.testing.assert_allclose(P.predict_stack(model, big, tile_size=64), whole, atol=1e-5)
    assert P.receptive_margin() % 4 == 0 and P.receptive_margin() >= 28


def test_bfloat16_counts_are_close_to_float32(model, frames, density):
    fast = P.predict_stack(model, frames, precision="bfloat16")
    counts, counts16 = density.sum(axis=(1, 2, 3)), fast.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(counts16, counts, rtol=0.03, atol=0.05)


def test_compiled_networks_are_reused_until_the_weights_change(frames):
    net = FCN(output="density", seed=0)
    before = P.predict_stack(net, frames[:1])
    compiled = P.compiled_network(net, "float32")
    P.predict_stack(net, frames[:1], precision="bfloat16")
    assert P.compiled_network(net, "float32") is compiled
    net.get_layer("density").set_weights([2 * net.get_layer("density").get_weights()[0]])
    np.testing.assert_allclose(P.predict_stack(net, frames[:1]), 2 * before, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------- TIFF files
def test_tiff_chunks_equal_the_stack_in_memory(model, stack_file, density):
    out = P.predict_tiff(model, stack_file, batch_size=4, progress=True)
    np.testing.assert_allclose(out, density, atol=1e-6)


@pytest.mark.parametrize(
    "index, selected",
    [
        (2, [2]),
        (-1, [5]),
        (slice(1, 6, 2), [1, 3, 5]),
        ([4, 0, 2], [4, 0, 2]),
        (np.int64(3), [3]),
    ],
)
def test_index_selects_frames(model, stack_file, density, index, selected):
    out = P.predict_tiff(model, stack_file, index=index, batch_size=2)
    np.testing.assert_allclose(out, density[selected], atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_8_16_and_32_bit_tiffs(model, tmp_path, dtype):
    base = np.random.default_rng(5).integers(0, 256, (3, 20, 28))
    data = {np.uint8: base, np.uint16: base * 257, np.float32: base / 255.0}[dtype]
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data.astype(dtype), photometric="minisblack")
    reference = P.predict_stack(model, base.astype(np.float32))
    np.testing.assert_allclose(P.predict_tiff(model, path), reference, atol=1e-5)


def test_predict_tiff_always_returns_density_maps(model, stack_file, density):
    np.testing.assert_allclose(P.predict_tiff(model, stack_file), density, atol=1e-6)
    selected = P.predict_tiff(model, stack_file, [4, 1])  # index positional, as DEFCoN's
    assert selected.shape == (2, 30, 45, 1) and selected.dtype == np.float32
    np.testing.assert_allclose(selected, density[[4, 1]], atol=1e-6)
    with pytest.raises(TypeError):  # options are keyword-only
        P.predict_tiff(model, stack_file, None, 4)
    with pytest.raises(TypeError):
        model.predict_tiff(stack_file, None, 4)


def test_predict_tiff_output_is_deprecated(model, stack_file, density, tmp_path):
    message = r"predict_tiff\(output=\.\.\.\) returns per-frame counts; use count_tiff"
    for predict in (lambda **kw: P.predict_tiff(model, **kw), model.predict_tiff):
        out = tmp_path / "density.tif"
        with pytest.warns(DeprecationWarning, match=message) as warned:
            counts = predict(input_file=stack_file, index=[0, 2], output=out)
        assert warned[0].filename == __file__  # points at the caller, not at defcon
        np.testing.assert_allclose(counts, density[[0, 2]].sum(axis=(1, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose(tifffile.imread(out)[..., None], density[[0, 2]], atol=1e-6)


def test_count_tiff_equals_the_cli_csv_and_writes_the_same_maps(tmp_path):
    """``defcon predict`` is count_tiff: same rows, flags (envelope, NaN pixels), maps."""
    import pandas as pd
    from test_envelope import frames as simulated

    from defcon.cli import main
    from defcon.envelope import Envelope

    model_file = tmp_path / "m.keras"
    FCN(output="density", seed=0, envelope=Envelope((0.7, 2.5), (0, 360))).save(model_file)
    data = np.concatenate([simulated(1.2, n=32), simulated(3.4, n=32, seed=1)])
    data = data.astype(np.float32)
    data[3, 2, 2] = np.nan
    stack = tmp_path / "s.tif"
    tifffile.imwrite(stack, data)
    cli_csv, cli_maps = tmp_path / "cli.csv", tmp_path / "cli.h5"
    options = ["--box", "5", "--batch-size", "32", "--nan-frames", "flag"]
    argv = ["--quiet", "predict", model_file, stack, "--counts", cli_csv, "--out", cli_maps]
    assert main([str(a) for a in argv + options]) == 0

    result = P.count_tiff(
        model_file,
        stack,
        counts=tmp_path / "lib.csv",
        density_output=tmp_path / "lib.h5",
        box_size=5,
        batch_size=32,
        stack_options={"nonfinite": "flag"},
    )
    assert (tmp_path / "lib.csv").read_text() == cli_csv.read_text()
    table = pd.read_csv(cli_csv)
    assert table.frame.tolist() == (result.frames + 1).tolist() == list(range(1, 65))
    np.testing.assert_allclose(table["count"], result.counts, atol=5e-5)  # NaN where NaN
    np.testing.assert_allclose(table["max_local_count"], result.max_local_counts, atol=5e-5)
    assert table.flag.fillna("").tolist() == list(result.flags)
    assert result.flags[3] == "nan_pixels" and result.counted.sum() == 63
    assert set(result.flags[32:]) == {"psf_wide"} and "33-64" in result.envelope_summary
    assert result.truncated is None and result.box_size == 5
    assert result.counts_path == tmp_path / "lib.csv"

    maps = P.predict_tiff(FCN.from_file(model_file), stack, stack_options={"nonfinite": "flag"})
    for written in (cli_maps, result.density_path):
        with h5py.File(written) as f:
            np.testing.assert_allclose(f["density"][()], maps, atol=1e-6)  # NaN where NaN
            assert list(f["frame_index"][()]) == list(range(64))


@pytest.mark.parametrize("suffix", [".tif", ".h5"])
def test_written_outputs_equal_the_returned_densities(model, stack_file, density, tmp_path, suffix):
    out = tmp_path / f"density{suffix}"
    result = P.count_tiff(model, stack_file, index=[1, 2, 3, 5], batch_size=3, density_output=out)
    expected = density[[1, 2, 3, 5]]
    assert result.frames.tolist() == [1, 2, 3, 5] and result.counts_path is None
    np.testing.assert_allclose(result.counts, expected.sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.max_local_counts, P.max_local_count(expected), rtol=1e-5)
    if suffix == ".tif":
        written = tifffile.imread(out)[..., None]
    else:
        with h5py.File(out) as f:
            written = f["density"][()]
            assert f["density"].chunks == (1, 30, 45, 1)
            assert f["density"].attrs["source_file"] == str(stack_file)
            assert list(f["frame_index"][()]) == [1, 2, 3, 5]
    np.testing.assert_allclose(written, expected, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_failed_prediction_leaves_no_output(model, stack_file, tmp_path, monkeypatch):
    out = tmp_path / "density.tif"

    def fail(self, density):
        raise RuntimeError("disk full")

    monkeypatch.setattr(P.DensityWriter, "write", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        P.count_tiff(model, stack_file, density_output=out, counts=tmp_path / "counts.csv")
    assert list(tmp_path.iterdir()) == []


def test_on_chunk_reports_progress_and_can_stop_the_count(model, stack_file, tmp_path):
    calls = []
    result = P.count_tiff(
        model, stack_file, batch_size=4, on_chunk=lambda *done: calls.append(done)
    )
    assert calls == [(4, 6), (6, 6)]
    np.testing.assert_array_equal(
        result.counts, P.count_tiff(model, stack_file, batch_size=4).counts
    )

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        P.count_tiff(
            model,
            stack_file,
            counts=tmp_path / "c.csv",
            density_output=tmp_path / "d.tif",
            on_chunk=stop,
        )
    assert list(tmp_path.iterdir()) == []


def test_iter_predict_tiff_and_count_rows(model, stack_file, density):
    rows = []
    for frames, chunk in P.iter_predict_tiff(model, stack_file, batch_size=4):
        rows += P.count_rows(chunk, frames + 1)
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([r[1] for r in rows], density.sum(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose([r[2] for r in rows], P.max_local_count(density), rtol=1e-6)


# ------------------------------------------------------------- local counts
def test_max_local_count_equals_brute_force():
    d = np.random.default_rng(6).random((3, 17, 23)).astype(np.float32)
    brute = np.array(
        [
            [
                [d[k, r : r + 7, c : c + 7].sum(dtype=np.float64) for c in range(17)]
                for r in range(11)
            ]
            for k in range(3)
        ]
    )
    np.testing.assert_allclose(P.local_count_map(d), brute, rtol=1e-12)
    np.testing.assert_allclose(P.max_local_count(d[..., None]), brute.max(axis=(1, 2)))
    assert P.local_count_map(d[0], box_size=5).shape == (13, 19)
    assert P.max_local_count(d[0], box_size=1)[0] == pytest.approx(d[0].max())
    with pytest.raises(ShapeMismatchError, match="smaller than the 18 x 18 box"):
        P.local_count_map(d, box_size=18)


def test_max_count_model_equals_max_local_count(model):
    x = np.stack([_blobs((32, 48), s, n=20) for s in range(3)])[..., None]
    max_model = model.with_max_count(pool=(7, 7))
    expected = max_model.predict(x, verbose=0)[:, 0]
    np.testing.assert_allclose(
        P.max_local_count(P.predict_stack(model, x)), expected, rtol=1e-4, atol=1e-5
    )
    with pytest.raises(ModelKindError, match="max local count"):
        P.predict_stack(max_model, x)


# ------------------------------------------------------------------- errors
def test_bad_files_raise_errors_naming_the_file(model, tmp_path, stack_file):
    with pytest.raises(MissingFileError, match="nope.tif"):
        P.predict_tiff(model, tmp_path / "nope.tif")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((4, 6, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(UnsupportedFileError, match=r"rgb\.tif: .*RGB"):
        P.predict_tiff(model, rgb)
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((0, 8, 8), np.uint16))
    with pytest.raises(UnsupportedFileError, match=r"empty\.tif: .*empty"):
        P.predict_tiff(model, empty)
    with pytest.raises(UnsupportedFileError, match=r"out\.png: density maps are written as"):
        P.count_tiff(model, stack_file, density_output=tmp_path / "out.png")
    with pytest.raises(ModelKindError, match=r"model 'defcon': a 'seg' model; counting needs"):
        P.count_tiff(FCN(output="seg", seed=0), stack_file)
    with pytest.raises(P.FrameIndexError, match=r"stack\.tif: frame index 6 outside .* 6 frames"):
        P.predict_tiff(model, stack_file, index=[0, 6])
    with pytest.raises(IndexError):
        P.predict_tiff(model, stack_file, index=-7)
    assert issubclass(P.FrameIndexError, DefconError)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3, 4, 5)), np.zeros((0, 8, 8)), np.zeros(5), np.array([["a", "b"]])]
)
def test_bad_arrays_raise_shape_errors(model, bad):
    with pytest.raises(ShapeMismatchError, match="expected real"):
        P.predict_stack(model, bad)


def test_bad_options(model, frames):
    with pytest.raises(ValueError, match="precision"):
        P.predict_stack(model, frames, precision="float16")
    with pytest.raises(ValueError, match="tile_size"):
        P.predict_stack(model, frames, tile_size=30)
    with pytest.raises(ValueError, match="batch_size"):
        P.predict_stack(model, frames, batch_size=0)


def test_fcn_methods_pass_precision_through(model, frames):
    fp32 = model.predict_stack(frames)
    bf16 = model.predict_stack(frames, precision="bfloat16")
    assert bf16.shape == fp32.shape and not np.array_equal(bf16, fp32)
    np.testing.assert_allclose(bf16.sum(axis=(1, 2, 3)), fp32.sum(axis=(1, 2, 3)), rtol=0.03)


@pytest.mark.tensorflow_only  # the TF1 and ONNX exports
def test_wrong_network_kinds_and_arguments_have_one_error_class_each(tmp_path, sim_files):
    from defcon.errors import ParameterError
    from defcon.export import save_tf1_model
    from defcon.package import export_onnx
    from defcon.tiffio import TiffStack

    seg = FCN(output="seg", seed=0)
    for refuse in (
        lambda: P.predict_stack(
            FCN(output="density", seed=0).with_max_count(), np.zeros((1, 8, 8))
        ),
        lambda: seg.with_max_count(),
        lambda: save_tf1_model(seg, tmp_path / "seg_export"),
        lambda: export_onnx(seg, tmp_path / "seg.onnx"),
    ):
        with pytest.raises(ModelKindError):
            refuse()
    for refuse in (
        lambda: P.predict_stack(seg, np.zeros((1, 8, 8)), precision="float8"),
        lambda: FCN(output="counts"),
        lambda: TiffStack(sim_files[0], nonfinite="ignore"),
    ):
        with pytest.raises(ParameterError):
            refuse()
