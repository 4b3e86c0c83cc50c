"""The napari plugin (defcon[napari]), headless: QT_QPA_PLATFORM=offscreen."""

import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from defcon.napari_plugin import (  # noqa: E402
    CountingWidget,
    SimulationWidget,
    get_reader,
    true_positions,
)
from defcon.predict import count_tiff, local_count_map  # noqa: E402
from defcon.simulate import simulate  # noqa: E402

pytestmark = [
    # napari 0.6 on PyQt5 warns that theme detection needs Qt6, each time a viewer starts.
    pytest.mark.filterwarnings("ignore:System theme detection requires a Qt6:UserWarning"),
    # napari 0.6's shape triangulation calls np.divide(where=...) without out= (numpy >= 2.4).
    pytest.mark.filterwarnings("ignore:'where' used without 'out':UserWarning"),
]

FRAMES, HEIGHT, WIDTH = 6, 40, 56

# Tests that open a viewer are opt-in: with napari 0.6.6 / PyQt5 here, closing a viewer that
# holds the counting widget's layers hung (offscreen and under Xvfb) in the vispy canvas's
# _remove_layer; unresolved, so they must not block the suite.
gui = pytest.mark.skipif(
    not os.environ.get("DEFCON_NAPARI_GUI_TESTS"),
    reason="set DEFCON_NAPARI_GUI_TESTS=1: viewer teardown hung headless here (napari 0.6.6)",
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    simulate(out, FRAMES, HEIGHT, WIDTH, seed=3, density_sweep=(0.5, 3.0), psf_sigma_px=1.0)
    return out / "stack.tif"


@pytest.fixture(scope="module")
def reference(stack, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    counts = out / "stack_counts.csv"
    return count_tiff(
        "pretrained", stack, counts=counts, density_output=out / "stack_density.tif", plot=True
    )


def _counted(viewer, qtbot, stack):
    viewer.open(str(stack), plugin="defcon")
    widget = CountingWidget(viewer)
    widget.model.value = "pretrained"
    widget.image.value = viewer.layers["stack"]
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.result is not None, timeout=10_000)
    return widget


def test_reader_is_lazy_and_exact(stack):
    import tifffile

    ((data, meta, kind),) = get_reader(str(stack))(str(stack))
    assert kind == "image" and data.shape == (FRAMES, HEIGHT, WIDTH)
    assert type(data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(data), tifffile.imread(stack))
    assert get_reader("counts.csv") is None


@gui
def test_counting_widget(make_napari_viewer, qtbot, stack, reference, tmp_path):
    viewer = make_napari_viewer()
    widget = _counted(viewer, qtbot, stack)
    density = widget.density_layer
    assert density.data.shape == (FRAMES, HEIGHT, WIDTH)
    assert density.blending == "additive"
    np.testing.assert_allclose(widget.result.counts, reference.counts, atol=1e-6)
    np.testing.assert_allclose(
        widget.result.max_local_counts, reference.max_local_counts, atol=1e-6
    )
    assert widget.result.flags == reference.flags

    for frame in (0, FRAMES - 1, 2):
        viewer.dims.set_current_step(0, frame)
        boxes = local_count_map(np.asarray(density.data[frame]), 7)
        row, col = np.unravel_index(np.argmax(boxes), boxes.shape)
        top_left = widget.box_layer.data[0].min(axis=0) + 0.5
        np.testing.assert_array_equal(top_left[-2:], [row, col])
        np.testing.assert_allclose(widget.box_layer.data[0].ptp(axis=0)[-2:], [7, 7])

    worker = widget.save(tmp_path)
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert (tmp_path / "stack_counts.csv").read_bytes() == reference.counts_path.read_bytes()
    assert (tmp_path / "stack_counts.png").is_file()
    saved = napari.utils.io.imread(str(tmp_path / "stack_density.tif"))
    np.testing.assert_allclose(saved, np.asarray(density.data), atol=1e-6)


@gui
def test_counting_can_be_cancelled(make_napari_viewer, qtbot, stack):
    viewer = make_napari_viewer()
    viewer.open(str(stack), plugin="defcon")
    widget = CountingWidget(viewer)
    worker = widget.run()
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert widget.run_button.enabled and not widget.cancel_button.enabled


@gui
def test_simulation_widget(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = SimulationWidget(viewer)
    widget.frames.value, widget.height.value, widget.width.value = 5, HEIGHT, WIDTH
    widget.seed.value = 7
    widget.folder.value = tmp_path
    image, points = widget.run()
    assert image.data.shape == (5, HEIGHT, WIDTH)
    truth = pd.read_csv(tmp_path / "frame_logger.csv")
    per_frame = np.bincount(points.data[:, 0].astype(int), minlength=5)
    np.testing.assert_array_equal(per_frame, np.bincount(truth["frame"] - 1, minlength=5))
    np.testing.assert_allclose(points.data[:, 1], truth["y"] - 0.5)
    np.testing.assert_allclose(points.data[:, 2], truth["x"] - 0.5)


def test_true_positions_convention(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text("frame,id,x,y,z,brightness\n2,1,3.5,0.5,0,100\n")
    np.testing.assert_array_equal(true_positions(path), [[1.0, 0.0, 3.0]])
