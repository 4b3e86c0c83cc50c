"""Errors raised for everything a user can get wrong.

Every error is a :class:`DefconError` and also subclasses the matching built-in
exception, so ``except ValueError`` or ``except FileNotFoundError`` keep working.
Messages name the file, the field and what was expected.
"""


class DefconError(Exception):
    """Base class of every error defcon raises on purpose."""


class MissingFileError(DefconError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class UnsupportedFileError(DefconError, ValueError):
    """A file exists but is of a type or layout defcon cannot read."""


class GroundTruthError(DefconError, ValueError):
    """A frame-logger CSV or DataFrame is malformed or does not fit its stack."""


class ShapeMismatchError(DefconError, ValueError):
    """Arrays or datasets that must agree in shape do not."""


class TrainingSetError(DefconError, ValueError):
    """An HDF5 file is not a TrainingSet, or an operation on it is not allowed."""


class DuplicateNameError(TrainingSetError, KeyError):
    """A dataset of that name already exists in the TrainingSet."""

    def __str__(self):  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class FrameIndexError(DefconError, IndexError):
    """A frame index is outside the stack."""


class ConfigError(DefconError, ValueError):
    """A training configuration file has a wrong key, value, type or path."""


class ModelFileError(DefconError, ValueError):
    """A file is not a model defcon can load, or its contents are inconsistent."""


class ExportError(DefconError, ValueError):
    """A model or an export option that cannot be exported as asked."""


class TrainingError(DefconError, RuntimeError):
    """Training could not produce a usable model (diverged, or not calibratable)."""


class OverwriteError(DefconError, FileExistsError):
    """An output would replace one of the inputs, or a file defcon did not write."""


class DiskFullError(DefconError, OSError):
    """Not enough free disk space for an output."""


class ModelKindError(ModelFileError, ExportError):
    """A network of the wrong kind for the task.

    For example a max-count or segmentation network where density maps are
    needed. It is a :class:`ModelFileError` and an :class:`ExportError`, so
    code catching either keeps working.
    """


class BackendError(DefconError, RuntimeError):
    """What was asked needs TensorFlow (or a device) that the active Keras backend lacks.

    The message names what to install or which ``KERAS_BACKEND`` to run with.
    """


class ParameterError(DefconError, ValueError):
    """A function argument outside what it accepts (a precision, a size, a choice)."""


class IntegrityError(ModelFileError):
    """A packaged file does not match its recorded checksum, or a path is unsafe."""


class CalibrationError(DefconError, ValueError):
    """A stack from which the imaging conditions cannot be estimated (too few spots, no frames)."""


class CounterClosedError(DefconError, RuntimeError):
    """A frame was submitted to a live counter that is closed or stopped (:mod:`defcon.live`)."""


class StacksFailedError(DefconError, RuntimeError):
    """Some stacks of a many-stack run could not be counted (:mod:`defcon.distributed`)."""


class GroundTruthWarning(UserWarning):
    """Ground truth was usable but something was left out (e.g. emitters outside the frame)."""
