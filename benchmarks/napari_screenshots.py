"""The napari pictures of docs/guide.md: the counting and the simulation widgets at work.

Opens napari with the defcon plugin, simulates a stack whose density ramps
from sparse to crowded, counts it with the counting widget (the shipped
model) and saves the window as ``napari-counting.png``; then runs the
simulation widget in a second viewer and saves ``napari-simulation.png``.
Both go into OUT (default: docs/). Needs ``defcon[napari]``, ``defcon[jax]``
and a display with OpenGL (Qt's offscreen platform draws no canvas); headless,
under Xvfb (Qt's xcb platform needs libxcb-icccm4, libxcb-keysyms1 and
libxcb-xinerama0 there):

    QT_QPA_PLATFORM=xcb xvfb-run -a python benchmarks/napari_screenshots.py [OUT]

Keras runs on JAX here: with TensorFlow in the process, Mesa's software
OpenGL (llvmpipe, as under Xvfb) crashes in its first draw.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from defcon.simulate import simulate

FRAMES, HEIGHT, WIDTH, SEED = 120, 64, 96, 1
SHOWN_FRAME = 90  # 0-based: crowded, three quarters up the sweep
WINDOW = (1400, 900)


def wait_until(done, timeout=600):
    """Run the Qt event loop until ``done()`` (a napari worker finished), or fail."""
    end = time.monotonic() + timeout
    while not done():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish")
        QApplication.processEvents()
        time.sleep(0.02)


def settle(seconds=1.0):
    """Let Qt lay out and draw for a while (the canvas draws on the event loop)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def save_window(viewer, path):
    """Save the whole window (menus, docks, canvas)."""
    settle()
    viewer.screenshot(str(path), canvas_only=False, flash=False)


def fit_contrast(layer, frame):
    """Contrast limits of an image layer from one frame (napari's come from the first)."""
    layer.contrast_limits = np.percentile(np.asarray(layer.data[frame]), [1, 99.9])


def new_viewer():
    viewer = napari.Viewer(title="defcon in napari")
    viewer.window.resize(*WINDOW)
    return viewer


def counting(out, folder):
    """Count a simulated stack with the counting widget; returns the picture's path."""
    sim = simulate(folder, FRAMES, HEIGHT, WIDTH, seed=SEED, density_sweep=True)
    viewer = new_viewer()
    viewer.open(str(sim["stack"]), plugin="defcon")
    _, widget = viewer.window.add_plugin_dock_widget("defcon", "Count emitters")
    widget.run()
    wait_until(lambda: widget.run_button.enabled)
    if widget.result is None:
        raise RuntimeError(f"counting failed: {widget.status.value}")
    viewer.dims.set_current_step(0, SHOWN_FRAME)
    fit_contrast(viewer.layers["stack"], SHOWN_FRAME)
    viewer.layers.selection.active = widget.density_layer
    path = out / "napari-counting.png"
    save_window(viewer, path)
    print(f"{path}: {widget.status.value}")
    viewer.close()
    return path


def simulation(out, folder):
    """Simulate a stack with the simulation widget; returns the picture's path."""
    viewer = new_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("defcon", "Simulate a stack")
    widget.frames.value, widget.height.value, widget.width.value = 40, 48, 64
    widget.folder.value = folder
    image, points = widget.run()
    viewer.dims.set_current_step(0, 30)
    fit_contrast(image, 30)
    path = out / "napari-simulation.png"
    save_window(viewer, path)
    print(f"{path}: {widget.status.value}")
    viewer.close()
    return path


def main(out):
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        counting(out, Path(tmp) / "counting")
        simulation(out, Path(tmp) / "simulation")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs")
