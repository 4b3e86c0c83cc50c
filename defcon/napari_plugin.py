"""napari plugin: a TIFF reader, a counting widget and a simulation widget.

Installed with ``pip install "defcon[napari]"``; napari finds it through the
``napari.manifest`` entry point (``defcon/napari.yaml``).

* :func:`get_reader`: opens the stacks defcon reads (:class:`~defcon.tiffio.TiffStack`)
  as a lazy dask array, read in chunks of frames when napari shows them.
* :class:`CountingWidget`: runs a density model over an image layer in a worker
  thread and shows the density maps, the count and maximum local count of every
  frame, and the densest box of the frame on screen; "Save" writes what
  ``defcon predict`` writes, by calling :func:`~defcon.predict.count_tiff`.
* :func:`simulation_widget`: :func:`defcon.simulate.simulate` into a folder, the
  stack as an image layer and the true positions as a points layer.
"""

import contextlib
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


def count_frames(model, stack_path, density_file, box_size=7):
    """Count every frame of a stack, writing the densities to a ``.npy`` file.

    A generator, so that a napari worker reports progress and stops between
    chunks. Counts come from :func:`~defcon.predict.count_rows` over the chunks
    of the prediction loop :func:`~defcon.predict.count_tiff` uses.

    Parameters
    ----------
    model : FCN
        A density network.
    stack_path : str or Path
    density_file : str or Path
        ``.npy`` file of shape (N, H, W), float32, filled chunk by chunk.
    box_size : int

    Yields
    ------
    tuple of int
        ``(frames done, frames)`` after each chunk.

    Returns
    -------
    StackCounts
        With ``counts_path`` and ``density_path`` None (nothing written yet).
    """
    from .predict import (
        StackCounts,
        _checked_chunks,
        count_rows,
        envelope_check_for,
    )

    values, flags = [], []
    with TiffStack(stack_path) as stack:
        frames = np.arange(len(stack))
        density = np.lib.format.open_memmap(density_file, "w+", np.float32, stack.shape)
        check = envelope_check_for(model, stack.shape[1:])
        with contextlib.closing(_checked_chunks(model, stack, frames, check)) as chunks:
            for chunk_frames, chunk, chunk_flags in chunks:
                density[chunk_frames] = chunk[..., 0]
                values += [(c, m) for _, c, m in count_rows(chunk, chunk_frames + 1, box_size)]
                flags += list(chunk_flags)
                yield len(values), len(frames)
        density.flush()
        values = np.array(values, np.float64).reshape(-1, 2)
        return StackCounts(
            frames=frames,
            counts=values[:, 0],
            max_local_counts=values[:, 1],
            flags=tuple(flags),
            box_size=int(box_size),
            envelope_summary=check.summary() if check is not None else None,
            truncated=stack.truncated,
            counts_path=None,
            density_path=None,
        )


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


class CountingWidget:
    """Count emitters in an image layer with a DEFCoN model (napari dock widget).

    Qt is imported only when the widget is made: ``import defcon.napari_plugin``
    works without napari. ``native`` is the Qt widget napari docks.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer

    Attributes
    ----------
    result : StackCounts or None
        What the last run counted.
    density_layer, box_layer : napari layers or None
        The density maps (linked to the frame slider) and the densest box of
        the frame on screen.
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
        self.browse.changed.connect(self._pick_model)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.save_button.changed.connect(self._pick_save_folder)
        self.viewer.layers.events.inserted.connect(self.image.reset_choices)
        self.viewer.layers.events.removed.connect(self.image.reset_choices)
        self.viewer.dims.events.current_step.connect(self._show_frame)
        self.result = self.density_layer = self.box_layer = self.worker = None
        self._models, self._stack, self._used_model, self._cursors = {}, None, None, []
        self._folder = tempfile.TemporaryDirectory(prefix="defcon-napari-")
        self.native.destroyed.connect(self._folder.cleanup)
        self._plot = None

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
        """Count the selected layer in a worker thread; returns the worker."""
        from napari.qt.threading import thread_worker

        layer = self.image.value
        if layer is None:
            self.status.value = "no image layer"
            return None
        self._stack = _stack_file(layer, self._folder.name)
        name, box_size = self.model.value, int(self.box_size.value)
        density_file = Path(self._folder.name) / f"density-{id(self)}-{len(self._models)}.npy"
        if self.density_layer is not None and self.density_layer in self.viewer.layers:
            self.viewer.layers.remove(self.density_layer)  # releases its memory map

        def work():
            if name not in self._models:
                self._models[name] = load_density_model(name)
            model = self._models[name]
            return (yield from count_frames(model, self._stack, density_file, box_size))

        self.worker = thread_worker(work, start_thread=False)()
        self.worker.yielded.connect(self._progressed)
        self.worker.returned.connect(lambda result: self._counted(result, name, density_file))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self._busy(True, f"counting {layer.name} with {Path(name).name}...")
        self.worker.start()
        return self.worker

    def cancel(self):
        """Stop the running worker after its current chunk."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelled"

    def _busy(self, busy, text=""):
        self.run_button.enabled = not busy
        self.cancel_button.enabled = busy
        self.save_button.enabled = not busy and self.result is not None
        self.status.value = text

    def _progressed(self, done_total):
        done, total = done_total
        self.progress.max = total
        self.progress.value = done

    def _failed(self, err):
        self.status.value = f"error: {err}"

    def _finished(self):
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.save_button.enabled = self.result is not None

    def _counted(self, result, model_name, density_file):
        self.result, self._used_model = result, model_name
        density = np.load(density_file, mmap_mode="r")
        self.density_layer = self.viewer.add_image(
            density,
            name=f"{self._stack.stem} density",
            colormap="inferno",
            blending="additive",
            metadata={"defcon_density": str(density_file)},
        )
        self._show_plot()
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
        if self.result is None or self.density_layer is None:
            return
        frame = min(self.current_frame(), len(self.result.counts) - 1)
        density = np.asarray(self.density_layer.data[frame])
        if not np.isfinite(density).all():
            return
        size = self.result.box_size
        rectangle = box_rectangle(*densest_box(density, size), size)
        if self.box_layer is None or self.box_layer not in self.viewer.layers:
            self.box_layer = self.viewer.add_shapes(
                [rectangle],
                shape_type="rectangle",
                edge_color="cyan",
                face_color="transparent",
                edge_width=0.5,
                name="densest box",
            )
        else:
            self.box_layer.data = [rectangle]
        for cursor in self._cursors:
            cursor.set_xdata([frame + 1, frame + 1])
        if self._plot is not None:
            self._plot.draw_idle()

    # ----------------------------------------------------------------- saving
    def _pick_save_folder(self):
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, "Save counts in", "")
        if folder:
            self.save(folder)

    def save(self, folder):
        """Write what ``defcon predict STACK --out-dir FOLDER`` writes, in a worker.

        ``FOLDER/<stem>_counts.csv``, its plot ``<stem>_counts.png`` and the
        density maps ``<stem>_density.tif``, written by
        :func:`~defcon.predict.count_tiff` (the stack is counted again).

        Returns
        -------
        napari worker
        """
        from napari.qt.threading import thread_worker

        from .distributed import counts_path, density_path
        from .predict import count_tiff

        counts = Path(folder) / counts_path(self._stack).name
        density = density_path(self._stack, folder)
        model = self._models[self._used_model]
        stack, box_size = self._stack, self.result.box_size

        def work():
            return count_tiff(
                model, stack, counts=counts, density_output=density, box_size=box_size, plot=True
            )

        worker = thread_worker(work, start_thread=False)()
        worker.returned.connect(lambda r: setattr(self.status, "value", f"saved {r.counts_path}"))
        worker.errored.connect(self._failed)
        self.status.value = f"saving in {folder}..."
        worker.start()
        return worker


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
