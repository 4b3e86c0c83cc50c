"""napari plugin: a TIFF reader, a counting widget and a simulation widget.

Installed with ``pip install "defcon[napari]"``; napari finds it through the
``napari.manifest`` entry point (``defcon/napari.yaml``).

* :func:`get_reader`: opens the stacks defcon reads (:class:`~defcon.tiffio.TiffStack`)
  as a lazy dask array, read in chunks of frames when napari shows them.
* :class:`CountingWidget`: counts an image layer with
  :func:`~defcon.predict.count_tiff` in a worker thread and shows the density
  maps, the count and maximum local count of every frame, and the densest box
  of the frame on screen; "Save..." keeps the files ``defcon predict`` writes.
* :class:`SimulationWidget`: :func:`defcon.simulate.simulate` into a folder, the
  stack as an image layer and the true positions as a points layer.
"""

import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .tiffio import TiffStack

#: Bytes of frames read at a time by the reader (one dask chunk).
CHUNK_BYTES = 1 << 23
#: Name of the model shipped with defcon in the model list.
PRETRAINED = "pretrained"
#: Model files offered by the file picker.
MODEL_FILTER = "DEFCoN models (*.keras *.h5 *.zip)"
#: Cameras of the simulation widget (:class:`defcon.simulate.SimulationParameters`).
CAMERAS = ("ccd", "emccd", "scmos")


# ------------------------------------------------------------------- reader
def get_reader(path):
    """The reader napari calls for ``path``, or None when defcon cannot read it.

    Parameters
    ----------
    path : str or list of str
        One TIFF file (napari passes lists for several files; those are left
        to other readers).

    Returns
    -------
    callable or None
        Returns ``[(data, metadata, 'image')]`` with ``data`` from :func:`lazy_stack`.
    """
    if isinstance(path, list) or Path(path).suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with TiffStack(path):
            pass
    except (OSError, ValueError):  # defcon's file errors are both; other readers may try
        return None
    return _read_layers


def _read_layers(path):
    data = lazy_stack(path)
    meta = {"name": Path(path).stem, "metadata": {"defcon_stack": str(Path(path))}}
    return [(data, meta, "image")]


def lazy_stack(path, chunk_bytes=CHUNK_BYTES):
    """A dask array of the frames of a TIFF stack, read chunk by chunk when needed.

    Parameters
    ----------
    path : str or Path
    chunk_bytes : int
        Bytes of frames per chunk (at least one frame).

    Returns
    -------
    dask.array.Array of shape (N, H, W), the file's dtype
    """
    import dask
    import dask.array as da

    with TiffStack(path) as stack:
        shape, dtype = stack.shape, stack.dtype
    step = max(1, chunk_bytes // (shape[1] * shape[2] * dtype.itemsize))
    read = dask.delayed(_read_frames, pure=True)
    blocks = [
        da.from_delayed(
            read(str(path), a, min(a + step, shape[0])),
            (min(step, shape[0] - a),) + shape[1:],
            dtype,
        )
        for a in range(0, shape[0], step)
    ]
    return da.concatenate(blocks)


def _read_frames(path, start, stop):
    # One TiffStack per chunk: dask may read chunks in several threads at once.
    with TiffStack(path) as stack:
        return stack.read(start, stop)


# ------------------------------------------------------------------- counting
def load_density_model(name):
    """The density network of a model file, or of 'pretrained'."""
    from .networks import FCN
    from .predict import _density_network

    return _density_network(FCN.from_file(name))


def densest_box(density, box_size):
    """Top-left ``(row, col)`` of the ``box_size`` box holding the most emitters.

    Parameters
    ----------
    density : ndarray of shape (H, W)
    box_size : int

    Returns
    -------
    tuple of int
        The argmax of :func:`~defcon.predict.local_count_map`.
    """
    from .predict import local_count_map

    boxes = local_count_map(density, box_size)
    return tuple(int(i) for i in np.unravel_index(np.argmax(boxes), boxes.shape))


def box_rectangle(row, col, box_size):
    """Rectangle corners, napari coordinates, of the box with top-left pixel ``(row, col)``.

    napari puts pixel centres at integers, so a box of pixels ``row`` to
    ``row + box_size - 1`` spans ``row - 0.5`` to ``row + box_size - 0.5``.
    """
    lo = np.array([row, col], float) - 0.5
    return np.array([lo, lo + [box_size, 0], lo + box_size, lo + [0, box_size]])


def draw_counts(figure, result):
    """Draw the count and the maximum local count of every frame on ``figure``.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    result : StackCounts

    Returns
    -------
    list of matplotlib.lines.Line2D
        The vertical line of the current frame on each axis (moved by the widget).
    """
    from .plots import CountsTable, rolling_mean, rolling_window

    figure.clear()
    table = CountsTable.from_result(result)
    window = rolling_window(len(table.frames))
    axes = figure.subplots(2, 1, sharex=True)
    local = f"max local count ({result.box_size}x{result.box_size})"
    cursors = []
    for ax, values, name in zip(axes, (table.counts, table.max_local_counts), ("count", local)):
        ax.plot(table.frames, values, color="0.6", lw=0.8, marker=".", ms=2)
        ax.plot(table.frames, rolling_mean(values, window), color="C0", lw=1.5)
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        cursors.append(ax.axvline(1, color="C3", lw=1))
    axes[-1].set_xlabel("frame", fontsize=8)
    return cursors


def _stack_file(layer, folder):
    """The TIFF behind an image layer; layers not read from a file are written to ``folder``."""
    for path in (layer.metadata.get("defcon_stack"), layer.source.path):
        if path and Path(path).suffix.lower() in (".tif", ".tiff") and Path(path).is_file():
            return Path(path)
    import tifffile

    data = np.asarray(layer.data)
    if data.ndim == 2:
        data = data[np.newaxis]
    path = Path(folder) / f"{layer.name}.tif"
    tifffile.imwrite(path, data)
    return path


class CountingCancelled(Exception):
    """Raised in the counting thread, between chunks, after Cancel was pressed."""


@functools.cache
def _progress_signal_class():
    # Qt classes are made on first use: importing this module needs no Qt.
    from qtpy.QtCore import QObject, Signal

    class ProgressSignal(QObject):
        """Carries ``(frames done, frames)`` from the counting thread to the widget."""

        changed = Signal(int, int)

    return ProgressSignal


class CountingWidget:
    """Count emitters in an image layer with a DEFCoN model (napari dock widget).

    The count is :func:`~defcon.predict.count_tiff`'s, run in a worker thread
    with ``defcon predict``'s outputs (counts CSV, its plot, density maps) in a
    temporary folder; "Save..." copies them. Qt is imported only when the
    widget is made: ``import defcon.napari_plugin`` works without napari.
    ``native`` is the Qt widget napari docks.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    result : StackCounts or None
        What the last count returned (its files are in a temporary folder).
    density_layer, box_layer : napari layers or None
        The density maps (linked to the frame slider) and the densest box of
        the frame on screen.
    worker : napari worker or None
        The last count's.
    """

    def __init__(self, napari_viewer):
        from magicgui import widgets

        self.viewer = napari_viewer
        self.model = widgets.ComboBox(label="model", choices=[PRETRAINED], value=PRETRAINED)
        self.browse = widgets.PushButton(text="Model file...")
        self.image = widgets.ComboBox(label="image", choices=self._image_layers)
        self.box_size = widgets.SpinBox(label="box size", value=7, min=1, max=99)
        self.run_button = widgets.PushButton(text="Count")
        self.cancel_button = widgets.PushButton(text="Cancel", enabled=False)
        self.progress = widgets.ProgressBar(label="frames", value=0, min=0, max=1)
        self.save_button = widgets.PushButton(text="Save...", enabled=False)
        self.status = widgets.Label(value="")
        self.container = widgets.Container(
            widgets=[
                self.model,
                self.browse,
                self.image,
                self.box_size,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.save_button,
                self.status,
            ]
        )
        self.native = self.container.native
        # napari keeps only `native`, and signals hold their slots weakly.
        self.native._defcon_widget = self
        self.browse.changed.connect(self._pick_model)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._pick_save_folder)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self.viewer.dims.events.current_step.connect(self._show_frame)
        self._progress = _progress_signal_class()(self.native)
        self._progress.changed.connect(self._progressed)
        self.result = self.density_layer = self.box_layer = self.worker = None
        self._models, self._stack, self._cursors, self._plot = {}, None, [], None
        self._folder = tempfile.TemporaryDirectory(prefix="defcon-napari-")
        self.native.destroyed.connect(self._folder.cleanup)

    # -------------------------------------------------------------- choices
    def _image_layers(self, _widget=None):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def add_model_file(self, path):
        """Add a model file (``.keras``, ``.h5``, bioimage.io ``.zip``) and select it."""
        path = str(path)
        if path not in self.model.choices:
            self.model.choices = (*self.model.choices, path)
        self.model.value = path

    def _pick_model(self):
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "DEFCoN model", "", MODEL_FILTER)
        if path:
            self.add_model_file(path)

    # --------------------------------------------------------------- counting
    def run(self):
        """Count the selected layer in a worker thread.

        Returns
        -------
        napari worker or None
            None when there is no image layer.
        """
        from napari.qt.threading import thread_worker

        from .distributed import counts_path, density_path
        from .predict import count_tiff

        layer = self.image.value
        if layer is None:
            self.status.value = "no image layer"
            return None
        stack = _stack_file(layer, self._folder.name)
        name, box_size = self.model.value, int(self.box_size.value)
        out = Path(tempfile.mkdtemp(dir=self._folder.name))  # one folder per count

        def report(done, total):
            if worker.abort_requested:
                raise CountingCancelled
            self._progress.changed.emit(done, total)

        def work():
            if name not in self._models:
                self._models[name] = load_density_model(name)
            return count_tiff(
                self._models[name],
                stack,
                counts=out / counts_path(stack).name,
                density_output=density_path(stack, out),
                box_size=box_size,
                plot=True,
                on_chunk=report,
            )

        worker = thread_worker(work, start_thread=False, ignore_errors=True)()
        worker.returned.connect(lambda result: self._counted(result, stack))
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.progress.value = 0
        self._busy(True, f"counting {layer.name} with {Path(name).name}...")
        worker.start()
        return worker

    def cancel(self):
        """Stop the running count after its current chunk; nothing is kept."""
        if self.worker is not None:
            self.worker.quit()

    def _busy(self, busy, text=""):
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
        self.save_button.enabled = not busy and self.result is not None
        self.status.value = text

    def _progressed(self, done, total):
        self.progress.max = total
        self.progress.value = done

    def _failed(self, err):
        cancelled = isinstance(err, CountingCancelled)
        self.status.value = "cancelled" if cancelled else f"error: {err}"

    def _finished(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.save_button.enabled = self.result is not None

    def _counted(self, result, stack):
        for old in (self.density_layer, self.box_layer):
            if old is not None and old in self.viewer.layers:
                self.viewer.layers.remove(old)
        self.result, self._stack = result, stack
        density = lazy_stack(result.density_path)
        shown = np.asarray(density[min(self.current_frame(), len(density) - 1)])
        self.density_layer = self.viewer.add_image(
            density,
            name=f"{stack.stem} density",
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, float(np.nanmax(shown, initial=0.0)) or 1.0),
            metadata={"defcon_density": str(result.density_path)},
        )
        self._show_plot()
        self.box_layer = self.viewer.add_shapes(
            [box_rectangle(0, 0, result.box_size)],
            shape_type="rectangle",
            edge_color="cyan",
            face_color="transparent",
            edge_width=0.5,
            name="densest box",
        )
        self._show_frame()
        counted = result.counts[result.counted]
        self.status.value = (
            f"{len(result.counts)} frames, mean count {counted.mean():.2f}"
            if counted.size
            else f"{len(result.counts)} frames, none counted"
        )

    def _show_plot(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        if self._plot is None:
            self._plot = FigureCanvasQTAgg(Figure(figsize=(4, 3), layout="constrained"))
            self.viewer.window.add_dock_widget(self._plot, name="defcon counts", area="bottom")
        self._cursors = draw_counts(self._plot.figure, self.result)
        self._plot.draw_idle()

    def current_frame(self):
        """0-based frame on screen (the first axis of the frame slider)."""
        return int(self.viewer.dims.current_step[0]) if self.viewer.dims.ndim >= 3 else 0

    def _show_frame(self, _event=None):
        # Only updates layers still in the viewer: adding one here, while the
        # viewer removes its layers (each removal moves the slider), never ends.
        layers = self.viewer.layers
        if self.result is None or self.density_layer not in layers:
            return
        frame = min(self.current_frame(), len(self.result.counts) - 1)
        for cursor in self._cursors:
            cursor.set_xdata([frame + 1, frame + 1])
        if self._plot is not None:
            self._plot.draw_idle()
        density = np.asarray(self.density_layer.data[frame])
        if self.box_layer in layers and np.isfinite(density).all():
            size = self.result.box_size
            self.box_layer.data = [box_rectangle(*densest_box(density, size), size)]

    # ----------------------------------------------------------------- saving
    def _pick_save_folder(self):
        from qtpy.QtWidgets import QFileDialog

        from .errors import DefconError

        folder = QFileDialog.getExistingDirectory(self.native, "Save counts in", "")
        if folder:
            try:
                self.save(folder)
            except DefconError as err:
                self.status.value = f"error: {err}"

    def save(self, folder):
        """Save the last count's files as ``defcon predict`` writes them, in a worker.

        ``FOLDER/<stem>_counts.csv``, its plot ``<stem>_counts.png`` and the
        density maps ``<stem>_density.tif``: the files
        :func:`~defcon.predict.count_tiff` wrote, copied (those of ``defcon
        predict STACK --counts FOLDER/<stem>_counts.csv --out-dir FOLDER``).

        Returns
        -------
        napari worker

        Raises
        ------
        OverwriteError
            A file would replace the stack, or a file that is not a defcon
            output of its kind (as ``defcon predict`` refuses).
        """
        from napari.qt.threading import thread_worker

        from .files import check_output
        from .plots import check_png_output
        from .predict import check_density_output, is_counts_csv

        result, folder = self.result, Path(folder)
        sources = (result.counts_path, result.plot_path, result.density_path)
        counts, plot, density = (folder / path.name for path in sources)
        check_output(counts, [self._stack], same_kind=is_counts_csv, what="counts CSV")
        check_density_output(density, [self._stack])
        check_png_output(plot, [self._stack], [counts, density], what="counts plot")

        def work():
            for source, target in zip(sources, (counts, plot, density)):
                _copy(source, target)
            return counts

        worker = thread_worker(work, start_thread=False, ignore_errors=True)()
        worker.returned.connect(lambda path: setattr(self.status, "value", f"saved {path}"))
        worker.errored.connect(self._failed)
        self.status.value = f"saving in {folder}..."
        worker.start()
        return worker


def _copy(source, target):
    """Copy a file; ``target`` appears only once complete (as defcon's outputs)."""
    from .files import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


# ------------------------------------------------------------------ simulation
class SimulationWidget:
    """Simulate a stack (:func:`defcon.simulate.simulate`) and open it with its truth.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    summary : dict or None
        What the last :func:`~defcon.simulate.simulate` returned.
    """

    def __init__(self, napari_viewer):
        from magicgui import widgets

        self.viewer = napari_viewer
        self.frames = widgets.SpinBox(label="frames", value=50, min=1, max=100_000)
        self.height = widgets.SpinBox(label="height", value=64, min=8, max=4096)
        self.width = widgets.SpinBox(label="width", value=64, min=8, max=4096)
        self.seed = widgets.SpinBox(label="seed", value=1, min=0, max=2**31 - 1)
        self.sweep = widgets.CheckBox(label="density sweep", value=True)
        self.sweep_high = widgets.FloatSpinBox(
            label="sweep to (/µm²)", value=2.0, min=0.0, max=100.0, step=0.1
        )
        self.sigma = widgets.FloatSpinBox(label="PSF sigma (px)", value=1.0, min=0.3, max=10)
        self.photons = widgets.FloatSpinBox(
            label="photons", value=2000.0, min=1.0, max=1e6, step=100.0
        )
        self.camera = widgets.ComboBox(label="camera", choices=list(CAMERAS), value="ccd")
        self.folder = widgets.FileEdit(label="folder (empty: temporary)", mode="d", value="")
        self.run_button = widgets.PushButton(text="Simulate")
        self.status = widgets.Label(value="")
        self.container = widgets.Container(
            widgets=[
                self.frames,
                self.height,
                self.width,
                self.seed,
                self.sweep,
                self.sweep_high,
                self.sigma,
                self.photons,
                self.camera,
                self.folder,
                self.run_button,
                self.status,
            ]
        )
        self.native = self.container.native
        self.native._defcon_widget = self  # as CountingWidget's
        self.run_button.changed.connect(self.run)
        self.summary = None

    def out_dir(self):
        """The chosen folder, or a new temporary one."""
        value = str(self.folder.value)
        if value in ("", "."):
            return Path(tempfile.mkdtemp(prefix="defcon-sim-"))
        return Path(value)

    def run(self):
        """Simulate, then add the stack and the true positions as layers.

        Returns
        -------
        tuple of napari layers
            The image layer and the points layer.
        """
        from .simulate import simulate

        out = self.out_dir()
        self.summary = simulate(
            out,
            int(self.frames.value),
            int(self.height.value),
            int(self.width.value),
            seed=int(self.seed.value),
            density_sweep=(0.0, float(self.sweep_high.value)) if self.sweep.value else None,
            psf_sigma_px=float(self.sigma.value),
            photon_rate=float(self.photons.value),
            camera=self.camera.value,
        )
        ((data, meta, _),) = _read_layers(self.summary["stack"])
        image = self.viewer.add_image(data, **meta)
        points = self.viewer.add_points(
            true_positions(self.summary["frame_logger"]),
            name=f"{image.name} truth",
            size=1.5,
            face_color="transparent",
            border_color="lime",
            ndim=3,
        )
        self.status.value = (
            f"{self.summary['n_localizations']} emitters in {self.summary['n_frames']} "
            f"frames -> {out}"
        )
        return image, points


def true_positions(frame_logger):
    """Points ``(t, row, col)`` in napari coordinates of a frame-logger CSV.

    The CSV's frames are 1-based and its ``x`` (column) and ``y`` (row) put pixel
    centres at +0.5; napari's frames are 0-based with pixel centres at integers.

    Parameters
    ----------
    frame_logger : str or Path

    Returns
    -------
    ndarray of shape (M, 3), float64
    """
    import pandas as pd

    table = pd.read_csv(frame_logger, usecols=["frame", "x", "y"])
    return np.column_stack([table["frame"] - 1, table["y"] - 0.5, table["x"] - 0.5]).astype(
        np.float64
    )
