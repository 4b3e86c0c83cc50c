"""The napari plugin (defcon[napari]), headless: QT_QPA_PLATFORM=offscreen."""

import functools
import gc
import importlib.util
import os
import subprocess
import sys
import weakref

import conftest
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
napari = pytest.importorskip("napari")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tifffile  # noqa: E402

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
if importlib.util.find_spec("pytest_timeout"):
    # A Qt test that hangs (a viewer that never closes) fails the run instead of blocking it.
    pytestmark.append(pytest.mark.timeout(300, method="thread"))

FRAMES, HEIGHT, WIDTH = 6, 40, 56


@functools.cache
def _qt_failure():
    """Why a Qt application cannot start here (a library of the platform plugin missing), or ''.

    Tried in a child process: Qt aborts the process when its platform plugin
    cannot load, which would end the test run instead of skipping.
    """
    probe = "from qtpy.QtWidgets import QApplication; QApplication([])"
    env = {**os.environ, "QT_DEBUG_PLUGINS": "1"}  # names the library a plugin lacks
    try:
        run = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "a Qt application did not start within 60 s"
    if run.returncode == 0:
        return ""
    lines = run.stderr.splitlines()
    missing = [line for line in lines if "cannot open shared object" in line]
    return (missing or lines or [f"exit status {run.returncode}"])[-1].strip()[-160:]


@pytest.fixture
def viewer(request):
    """A headless napari viewer (napari's make_napari_viewer), or a skip saying why not."""
    plugins = request.config.pluginmanager
    if conftest.QT_IMPORT_ERROR:
        pytest.skip(f"Qt cannot be imported: {conftest.QT_IMPORT_ERROR}")
    if not (plugins.has_plugin("pytest-qt") and plugins.has_plugin("napari")):
        pytest.skip("pytest-qt or napari's pytest plugin is not installed or left out (-p no:)")
    if failure := _qt_failure():
        pytest.skip(f"Qt cannot start here: {failure}")
    return request.getfixturevalue("make_napari_viewer")()


@pytest.fixture
def bot(viewer, request):
    """pytest-qt's qtbot, set up after `viewer` (asked for directly, its session-wide
    QApplication would come before the viewer's skip)."""
    return request.getfixturevalue("qtbot")


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


def _dock(viewer, name):
    """A defcon widget docked from the plugin's manifest, as Plugins > defcon does."""
    _, widget = viewer.window.add_plugin_dock_widget("defcon", name)
    return widget


def _counted(viewer, bot, stack):
    viewer.open(str(stack), plugin="defcon")
    widget = _dock(viewer, "Count emitters")
    widget.model.value = "pretrained"
    widget.image.value = viewer.layers["stack"]
    # Waits on the widget, not on worker signals: the worker starts in run(), so
    # its signals may come before a waitSignal would connect.
    assert widget.run() is not None and not widget.run_button.enabled
    bot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    return widget


def test_reader_is_lazy_and_exact(stack):
    ((data, meta, kind),) = get_reader(str(stack))(str(stack))
    assert kind == "image" and data.shape == (FRAMES, HEIGHT, WIDTH)
    assert type(data).__module__.startswith("dask")
    np.testing.assert_array_equal(np.asarray(data), tifffile.imread(stack))
    assert get_reader("counts.csv") is None


def test_counting_widget(viewer, bot, stack, reference, tmp_path):
    widget = _counted(viewer, bot, stack)
    assert isinstance(widget, CountingWidget)
    assert (widget.progress.value, widget.progress.max) == (FRAMES, FRAMES)
    density = widget.density_layer
    assert density.data.shape == (FRAMES, HEIGHT, WIDTH)
    assert density.blending == "additive"
    np.testing.assert_array_equal(widget.result.counts, reference.counts)
    np.testing.assert_array_equal(widget.result.max_local_counts, reference.max_local_counts)
    assert widget.result.flags == reference.flags
    np.testing.assert_array_equal(np.asarray(density.data), tifffile.imread(reference.density_path))

    for frame in (0, FRAMES - 1, 2):
        viewer.dims.set_current_step(0, frame)
        boxes = local_count_map(np.asarray(density.data[frame]), 7)
        row, col = np.unravel_index(np.argmax(boxes), boxes.shape)
        (box,) = widget.box_layer.data
        np.testing.assert_array_equal(box.min(axis=0)[-2:] + 0.5, [row, col])
        np.testing.assert_array_equal(np.ptp(box, axis=0)[-2:], [7, 7])
        assert [c.get_xdata()[0] for c in widget._cursors] == [frame + 1] * 2

    widget.save(tmp_path)
    bot.waitUntil(lambda: not widget.status.value.startswith("saving"), timeout=60_000)
    for name in ("stack_counts.csv", "stack_density.tif"):
        assert (tmp_path / name).read_bytes() == (reference.counts_path.parent / name).read_bytes()
    assert (tmp_path / "stack_counts.png").is_file()
    assert widget.status.value == f"saved {tmp_path / 'stack_counts.csv'}"


def test_counting_widget_lives_as_long_as_its_dock(viewer):
    alive = weakref.ref(_dock(viewer, "Count emitters"))
    gc.collect()
    assert alive() is not None


def test_counting_can_be_cancelled(viewer, bot, stack):
    viewer.open(str(stack), plugin="defcon")
    widget = _dock(viewer, "Count emitters")
    widget.run()
    widget.cancel()
    bot.waitUntil(lambda: widget.run_button.enabled, timeout=120_000)
    assert widget.status.value == "cancelled"
    assert widget.result is None and widget.density_layer is None
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert [layer.name for layer in viewer.layers] == ["stack"]


def test_simulation_widget(viewer, tmp_path):
    widget = _dock(viewer, "Simulate a stack")
    assert isinstance(widget, SimulationWidget)
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
