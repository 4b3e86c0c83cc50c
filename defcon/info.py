"""Human-readable summaries of defcon files (``defcon info``)."""

from pathlib import Path

import h5py

from .datasets import GROUPS, MARKER, TrainingSet
from .errors import UnsupportedFileError
from .files import existing_file


def describe(path):
    """Describe a TrainingSet, a compact set or a model file.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        Several lines of text.
    """
    from .package_reader import describe_package

    path = existing_file(path, "file")
    kind = _kind(path)
    if kind == "package":
        return describe_package(path)
    if kind == "czann":
        from .czann import describe_czann

        return describe_czann(path)
    if kind == "model":
        return _describe_model(path)
    if kind is None:
        raise UnsupportedFileError(
            f"{path}: not a file defcon knows (expected an HDF5 "
            "training set, a .keras / .h5 model, a model package or a .czann)"
        )
    with TrainingSet(path, "r") as ts:
        lengths = ts.frame_counts()["input"]
        lines = [
            f"{path}: defcon training set, {len(lengths)} dataset(s), "
            f"{sum(lengths.values())} frames"
        ]
        lines += [f"  {key}: {value}" for key, value in ts.attrs.items() if key != MARKER]
        lines.append(ts._tree())
        for group in GROUPS:
            for name in ts.names(group):
                if "source_file" in ts[group][name].attrs:
                    lines.append(f"  {group}/{name} from {ts[group][name].attrs['source_file']}")
    return "\n".join(lines)


def loads_a_network(path):
    """True if :func:`describe` loads a network for ``path`` (and so imports TensorFlow).

    Parameters
    ----------
    path : str or Path
    """
    try:
        return _kind(Path(path)) == "model"
    except OSError:  # missing, unreadable or locked: describe says which
        return False


def _kind(path):
    """'package', 'czann', 'model', 'set' (a TrainingSet or compact set) or None."""
    from .czann import is_czann
    from .package_reader import is_package

    if is_package(path):
        return "package"
    if path.suffix.lower() == ".czann" or is_czann(path):
        return "czann"
    if path.suffix == ".keras":
        return "model"
    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        return "set" if MARKER in f.attrs else "model"


def _describe_model(path):
    from .networks import FCN

    model = FCN.from_file(path)
    return "\n".join(
        [
            f"{Path(path)}: defcon FCN '{model.name}'",
            f"  output: {model.output_kind}",
            f"  parameters: {model.count_params():,}",
            "  input: (batch, height, width, 1) float32, height and width multiples of 4 "
            "(predict_stack pads any size)",
            f"  layers: {', '.join(layer.name for layer in model.layers)}",
            _envelope_line(model.envelope),
        ]
    )


def _envelope_line(envelope):
    if envelope is None:
        return "  training envelope: not recorded (prediction cannot flag unfamiliar inputs)"
    (s0, s1), (d0, d1) = envelope.psf_sigma_px, envelope.emitters_per_frame
    text = f"  training envelope: PSF sigma {s0:g}-{s1:g} px, {d0:g}-{d1:g} emitters per 64 x 64"
    return text + (f"\n  trained on: {envelope.description}" if envelope.description else "")
