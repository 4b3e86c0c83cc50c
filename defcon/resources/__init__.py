"""Models shipped with defcon (``*.keras``, each with a model card ``*.md``).

Wherever defcon takes a model file (``FCN.from_file``, ``defcon predict``,
``InitialModel`` in a training configuration), the name of a shipped model
(:data:`PRETRAINED_MODELS`) or ``pretrained`` (the default one) stands for its
file here, unless a file of that name exists.

The published DEFCoN model ``defcon_tf13.h5`` is not shipped here: DEFCoN's
``pkg_resources.resource_filename('defcon.resources', 'defcon_tf13.h5')`` gives a
path that does not exist, and ``FCN.from_file`` on it says where to download the
model. Use :meth:`defcon.networks.FCN.published`.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
#: Models shipped with defcon, by name; each has a model card ``<name>.md`` beside it.
PRETRAINED_MODELS = ("defcon-broad-2026c", "defcon-broad-2026b", "defcon-sim-2026a")
#: The model ``pretrained`` stands for.
DEFAULT_PRETRAINED = "defcon-broad-2026c"


def shipped_model_file(name):
    """The file of a shipped model, or None when ``name`` names none.

    Parameters
    ----------
    name : str or Path
        ``pretrained`` or one of :data:`PRETRAINED_MODELS`.

    Returns
    -------
    Path or None

    Examples
    --------
    >>> shipped_model_file("pretrained").name
    'defcon-broad-2026c.keras'
    >>> shipped_model_file("model/defcon_model.keras") is None
    True
    """
    name = str(name)
    name = DEFAULT_PRETRAINED if name == "pretrained" else name
    return FOLDER / f"{name}.keras" if name in PRETRAINED_MODELS else None


def model_file(spec, folder="."):
    """``spec`` as a path: a shipped model's name gives its file, unless such a file exists.

    Parameters
    ----------
    spec : str or Path
    folder : str or Path
        Where a relative ``spec`` is looked for (a configuration file's folder).

    Returns
    -------
    Path
        ``folder / spec``, or the shipped model's file.
    """
    path = Path(folder) / spec
    shipped = shipped_model_file(spec)
    return shipped if shipped is not None and not path.exists() else path
