"""Two-stage DEFCoN training from an ``.ini`` file.

``python -m defcon.train config.ini``, ``defcon train config.ini`` or
``defcon.train.train("config.ini")``. Stage 1 fits the segmentation network
(binary cross-entropy); stage 2 freezes it and fits the density network on top
(pixel + lambda * count loss); ``FreezeSegmentation = false`` in ``[DensityNet]``
fine-tunes both networks together in stage 2 instead. Original DEFCoN config
files run unchanged.
"""

import logging
import math
import shutil
import sys
import types
from pathlib import Path

import keras
import numpy as np

from .config import read_config
from .devices import even_batches, training_devices, training_scope
from .errors import ConfigError, OverwriteError, TrainingError
from .files import atomic_path
from .models import SEGMENTATION_LAYER_NAMES, CountMAE, DensityLoss
from .networks import FCN, copy_weights_by_name
from .progress import keras_verbosity
from .streaming import CompactSetBatches, open_compact_set

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("epoch", "stage", "loss", "val_loss", "val_count_mae")


def train(config_file, verbose=1, overwrite=False):
    """Train a DEFCoN network as a configuration file says.

    Parameters
    ----------
    config_file : str or Path
        The ``.ini`` file (see ``configs/default.ini``).
    verbose : int
        Keras verbosity: 1 shows a progress bar per epoch on a terminal and
        one line per epoch elsewhere (logs, batch jobs), 2 a line per epoch,
        0 nothing.
    overwrite : bool
        Replace a model already in ``OutputDir`` (by default an error, so that
        a finished model is never lost by running a configuration again).

    Returns
    -------
    dict
        Paths of what was written: ``model``, ``history``, ``curves``,
        ``config``, ``seg_weights``; and ``best_val_count_mae``.

    Raises
    ------
    ConfigError, MissingFileError, TrainingSetError, OverwriteError
        Before any training starts.
    TrainingError
        Training diverged or the model cannot be calibrated; no model is written.
    """
    config = read_config(config_file)
    if Path(config.modelname).suffix.lower() not in ("", ".keras"):
        log.warning(
            "ModelName = %s: the model is saved in Keras 3 format as %s (load it "
            "with FCN.from_file)",
            config.modelname,
            config.model_file,
        )
    if config.model_file.exists() and not overwrite:
        raise OverwriteError(
            f"{config.model_file}: a trained model is already there; pass "
            "--overwrite (overwrite=True) to replace it, or change ModelName "
            "or OutputDir"
        )
    devices = training_devices(config)
    keras.utils.set_random_seed(config.seed)
    config.outputdir.mkdir(parents=True, exist_ok=True)
    config.weightdir.mkdir(parents=True, exist_ok=True)
    config_copy = config.outputdir / (Path(config.modelname).stem + ".ini")
    if config_copy.resolve() != config.config_file:
        shutil.copyfile(config.config_file, config_copy)
    initial = FCN.from_file(config.initialmodel) if config.initialmodel else None
    history = _History(config.outputdir / "history.tsv")
    # Models, optimizers, losses and metrics are made inside the scope (replicated when
    # several devices train); the saved model is a plain Keras model.
    with training_scope(devices), open_compact_set(config.trainingsetpath) as h5file:
        seg_model = FCN(
            output="seg",
            seed=config.seed,
            name=Path(config.modelname).stem,
            dropout_rate=config.dropoutrate,
        )
        if initial is not None:
            _start_from(initial, seg_model, config.initialmodel)
        seg_weights = config.weightdir / (Path(config.modelname).stem + ".seg.weights.h5")
        _fit_stage(
            seg_model, "seg", config.seg, config, h5file, seg_weights, history, verbose, devices
        )

        density_model = FCN(
            output="density",
            seed=config.seed,
            name=Path(config.modelname).stem,
            dropout_rate=config.dropoutrate,
        )
        if initial is not None:
            _start_from(initial, density_model, config.initialmodel)
        copy_weights_by_name(seg_model, density_model)
        for layer in density_model.layers:
            if layer.name in SEGMENTATION_LAYER_NAMES:
                layer.trainable = not config.density.freezesegmentation
        val_batches = _fit_stage(
            density_model,
            "density",
            config.density,
            config,
            h5file,
            config.checkpoint_file,
            history,
            verbose,
            devices,
        )
        count_scale = 1.0
        if config.countcalibration:
            count_scale = _calibrate_count(density_model, val_batches, config.config_file)
    # The best epoch's weights are restored at the end of fit: save them, calibrated.
    with atomic_path(config.model_file) as tmp:
        density_model.save(tmp)
    curves = _plot_curves(history.rows, config.outputdir / "curves.png")
    return {
        "model": config.model_file,
        "history": history.path,
        "curves": curves,
        "config": config_copy,
        "seg_weights": seg_weights,
        "count_scale": count_scale,
        "best_val_count_mae": history.best("density", "val_count_mae"),
    }


def _calibrate_count(model, val_batches, config_file):
    """Scale the output so validation counts match their targets on the whole.

    Dropout is active while fitting and off when predicting; after the ReLU
    layers that follow it, the two regimes differ and the network undercounts
    at prediction time (by ~6-9 % in our runs). The ``density`` layer is a
    linear 1x1 convolution without bias, so scaling its kernel by
    ``sum(targets) / sum(predictions)`` over the validation frames removes
    that bias exactly for the validation set.

    Returns
    -------
    float
        The factor applied.

    Raises
    ------
    TrainingError
        The validation frames hold no emitters, or the network predicts none.
    """
    predicted = target = 0.0
    for index in range(len(val_batches)):
        x, y = val_batches[index]
        # predict, not predict_on_batch: only predict splits a batch across devices.
        prediction = model.predict(x, batch_size=len(x), verbose=0)
        predicted += float(prediction.sum(dtype=np.float64))
        target += float(y.sum(dtype=np.float64))
    if not (predicted > 0 and target > 0 and math.isfinite(predicted)):
        raise TrainingError(
            f"{config_file}: count calibration impossible: the validation frames hold "
            f"{target:.3g} emitters and the network predicts {predicted:.3g}; train on data "
            "with emitters, or set CountCalibration = false"
        )
    scale = target / predicted
    layer = model.get_layer("density")
    layer.set_weights([w * np.float32(scale) for w in layer.get_weights()])
    log.info(
        "count calibration: predictions scaled by %.4f so validation counts match "
        "(%.1f emitters in %d batches)",
        scale,
        target,
        len(val_batches),
    )
    return scale


def _start_from(initial, model, path):
    """Copy ``initial``'s weights into ``model``; refuse when none fit, say what is left."""
    copied = copy_weights_by_name(initial, model)
    wanted = [layer.name for layer in model.layers if layer.weights]
    if not copied:
        raise ConfigError(
            f"[General] InitialModel: {path} shares no layer with the DEFCoN network "
            f"(it has {', '.join(layer.name for layer in initial.layers[:6])}, ...); training "
            "would start from scratch: remove InitialModel to do that on purpose"
        )
    missing = [name for name in wanted if name not in copied]
    if missing:
        log.info(
            "InitialModel %s: %d layers start from it, %s from scratch",
            path,
            len(copied),
            ", ".join(missing),
        )
    return copied


def _fit_stage(model, stage, settings, config, h5file, best_file, history, verbose, devices=None):
    """Fit one stage; the best epoch (lowest val_loss) is restored and saved.

    ``devices`` is :func:`defcon.devices.training_devices`' answer (None: one device).
    Returns the validation batches, or None when the stage has no epochs.
    """
    if settings.numepochs == 0:
        log.info("stage %s: NumEpochs = 0, skipped", stage)
        return None
    n_frames = h5file["input"]["input"].shape[0]
    n_val = max(1, int(round(n_frames * settings.validationsplit)))
    if n_frames - n_val < 1:
        raise ConfigError(
            f"{config.config_file}: ValidationSplit {settings.validationsplit} "
            f"leaves no training frame out of {n_frames}"
        )
    # The compact set is shuffled already; the last frames validate, as Keras'
    # validation_split does, so the split is the same on every run.
    train_batches = CompactSetBatches(
        h5file,
        stage,
        (0, n_frames - n_val),
        settings.batchsize,
        shuffle=True,
        augment=config.augment,
        seed=config.seed,
    )
    val_batches = CompactSetBatches(
        h5file, stage, (n_frames - n_val, n_frames), settings.batchsize, shuffle=False
    )
    train_batches, val_batches = (
        even_batches(train_batches, devices),
        even_batches(val_batches, devices),
    )
    if stage == "seg":
        loss, metrics = keras.losses.BinaryCrossentropy(), []
    else:
        loss, metrics = DensityLoss(settings.lambdafactor, settings.frameweightscale), [CountMAE()]
    model.compile(optimizer=keras.optimizers.Adam(settings.adamlr), loss=loss, metrics=metrics)
    log.info(
        "stage %s: %d training and %d validation frames, batch %d, up to %d epochs",
        stage,
        n_frames - n_val,
        n_val,
        settings.batchsize,
        settings.numepochs,
    )
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        _BestModelSaver(best_file, weights_only=stage == "seg"),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=max(config.patience, 1), restore_best_weights=True
        ),
        # The count term makes val_loss swing from epoch to epoch at AdamLR 1e-3;
        # halving the rate when it stalls settles the count scale.
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=0.5,
            patience=max(config.reducelrpatience, 1),
            min_lr=settings.adamlr / 64,
            verbose=0,
        ),
        history.callback(stage),
    ]
    diverged = f"{config.config_file}: stage {stage} diverged ({{}}); lower AdamLR. Nothing was "
    diverged += "saved as the model"
    try:
        fit = model.fit(
            train_batches.for_fit(),
            validation_data=val_batches.for_fit(),
            epochs=settings.numepochs,
            callbacks=callbacks,
            verbose=keras_verbosity(verbose),
            shuffle=False,
        )  # the batches shuffle themselves, in bounded blocks
    except RuntimeError as err:
        # PyTorch's binary cross-entropy rejects NaN outputs where the other
        # backends return a NaN loss (stopped by TerminateOnNaN, checked below).
        if "between 0 and 1" not in str(err):
            raise
        raise TrainingError(diverged.format("the network's outputs became NaN")) from err
    losses = fit.history.get("loss", []) + fit.history.get("val_loss", [])
    if not losses or not np.all(np.isfinite(losses)):
        epochs = len(fit.history.get("loss", []))
        raise TrainingError(
            diverged.format(f"loss {losses[-1] if losses else None} after {epochs} epochs")
        )
    return val_batches


class _BestModelSaver(keras.callbacks.Callback):
    """Save the model (atomically) whenever val_loss improves."""

    def __init__(self, path, weights_only):
        super().__init__()
        self.path, self.weights_only, self.best = path, weights_only, math.inf

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss", math.inf)
        if value < self.best:
            self.best = value
            with atomic_path(self.path) as tmp:
                if self.weights_only:
                    self.model.save_weights(tmp)
                else:
                    self.model.save(tmp)


class _History:
    """Rows of history.tsv, rewritten (atomically) after every epoch."""

    def __init__(self, path):
        self.path = Path(path)
        self.rows = []

    def callback(self, stage):
        """A Keras callback appending one row per epoch of ``stage``."""
        return keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: self.add(stage, epoch, logs or {})
        )

    def add(self, stage, epoch, logs):
        self.rows.append(
            {
                "epoch": epoch + 1,
                "stage": stage,
                "loss": logs.get("loss", math.nan),
                "val_loss": logs.get("val_loss", math.nan),
                "val_count_mae": logs.get("val_count_mae", math.nan),
            }
        )
        self.write()

    def write(self):
        with atomic_path(self.path) as tmp:
            lines = ["\t".join(HISTORY_COLUMNS)]
            lines += ["\t".join(_format_cell(row[c]) for c in HISTORY_COLUMNS) for row in self.rows]
            tmp.write_text("\n".join(lines) + "\n")

    def best(self, stage, column):
        values = [
            row[column]
            for row in self.rows
            if row["stage"] == stage and not math.isnan(row[column])
        ]
        return min(values) if values else math.nan


def _format_cell(value):
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _plot_curves(rows, path):
    """Plot loss per stage and validation count MAE per epoch to a PNG, kept epochs marked.

    See :func:`defcon.plots.plot_training_curves`; returns the PNG's Path.
    """
    from .plots import plot_training_curves

    return plot_training_curves(rows, path).path


class _CallableModule(types.ModuleType):
    """Lets ``defcon.train(...)`` work although ``defcon.train`` is this module."""

    def __call__(self, *args, **kwargs):
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
