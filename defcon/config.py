"""Training configuration files: the schema of their keys, reading and validation.

A configuration is an ``.ini`` file with sections ``[General]``, ``[SegNet]``
and ``[DensityNet]`` (see ``configs/default.ini``); original DEFCoN files are
valid. :func:`read_config` reports every problem at once, by section and key,
and resolves paths relative to the file's folder.
"""

import configparser
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, DefconError
from .files import existing_file
from .resources import model_file
from .streaming import open_compact_set

log = logging.getLogger(__name__)

#: Keys per section: name -> (type, default or REQUIRED, check, description).
REQUIRED = object()
_POSITIVE = (lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_FRACTION = (lambda v: 0 < v < 1, "a fraction strictly between 0 and 1")


def _device_count(raw):
    """``[General] Devices``: 'all' (any case) or a whole number."""
    return "all" if raw.lower() == "all" else int(raw)


_STAGE_KEYS = {
    "batchsize": (int, 32, _POSITIVE),
    "numepochs": (int, 15, _NON_NEGATIVE),
    "validationsplit": (float, 0.1, _FRACTION),
    "adamlr": (float, 0.001, _POSITIVE),
}
SCHEMA = {
    "General": {
        "modelname": (str, REQUIRED, None),
        "trainingsetpath": (Path, REQUIRED, None),
        "outputdir": (Path, REQUIRED, None),
        "weightdir": (Path, REQUIRED, None),
        "seed": (int, 0, None),
        "patience": (int, 3, _NON_NEGATIVE),
        "reducelrpatience": (int, 1, _NON_NEGATIVE),
        "dropoutrate": (float, 0.5, (lambda v: 0 <= v < 1, "a fraction >= 0 and < 1")),
        "initialmodel": (Path, None, None),
        "augment": (bool, False, None),
        "countcalibration": (bool, True, None),
        "devices": (_device_count, 1, (lambda v: v == "all" or v >= 1, "'all' or a number >= 1")),
    },
    "SegNet": dict(_STAGE_KEYS),
    "DensityNet": {
        "lambdafactor": (float, 0.01, _NON_NEGATIVE),
        "frameweightscale": (float, 0.0, _NON_NEGATIVE),
        "freezesegmentation": (bool, True, None),
        **_STAGE_KEYS,
    },
}


@dataclass
class StageConfig:
    """Settings of one training stage (``[SegNet]`` or ``[DensityNet]``)."""

    batchsize: int
    numepochs: int
    validationsplit: float
    adamlr: float
    lambdafactor: float = 0.0
    frameweightscale: float = 0.0
    freezesegmentation: bool = True


@dataclass
class TrainingConfig:
    """A validated training configuration; paths are absolute."""

    config_file: Path
    modelname: str
    trainingsetpath: Path
    outputdir: Path
    weightdir: Path
    seed: int
    patience: int
    reducelrpatience: int
    dropoutrate: float
    initialmodel: Path
    augment: bool
    countcalibration: bool
    devices: int | str = 1
    seg: StageConfig = field(default=None)
    density: StageConfig = field(default=None)

    @property
    def model_file(self):
        """``OutputDir/<ModelName without suffix>.keras``.

        ``x.h5`` is saved as ``x.keras``, with a warning in the log.
        """
        return self.outputdir / (Path(self.modelname).stem + ".keras")

    @property
    def checkpoint_file(self):
        """``OutputDir/<ModelName>.best.keras``: the density stage's best epoch so far.

        Saved before calibration; the model file is written only when training
        succeeded.
        """
        return self.outputdir / (Path(self.modelname).stem + ".best.keras")


def read_config(config_file):
    """Read and validate a training configuration.

    Every problem is collected first, then reported together.

    Parameters
    ----------
    config_file : str or Path
        The ``.ini`` file. Relative paths inside it are relative to its folder.

    Returns
    -------
    TrainingConfig

    Raises
    ------
    MissingFileError
        The config file does not exist.
    ConfigError
        Any wrong, missing or unknown key, value, type or path; the message
        lists all of them by section and key.
    """
    path = existing_file(config_file, "training configuration").resolve()
    try:
        try:
            parser = _parse_ini(path, "utf-8")
        except UnicodeDecodeError:  # files saved by older editors: every byte is Latin-1
            parser = _parse_ini(path, "latin-1")
    except configparser.Error as err:
        raise ConfigError(f"{path}: not a valid .ini file: {err}") from err
    problems, values = [], {}
    for section, keys in SCHEMA.items():
        if not parser.has_section(section):
            problems.append(f"missing section [{section}]")
            continue
        unknown = sorted(set(parser[section]) - set(keys))
        problems += [
            f"[{section}] {key}: unknown key (known: {', '.join(_display(k) for k in keys)})"
            for key in unknown
        ]
        for key, spec in keys.items():
            values[section, key] = _read_value(
                parser[section], section, key, spec, path.parent, problems
            )
    unknown_sections = [s for s in parser.sections() if s not in SCHEMA]
    problems += [f"[{s}]: unknown section (known: {', '.join(SCHEMA)})" for s in unknown_sections]
    if not problems:
        _check_paths(values, problems)
    if not problems and values["DensityNet", "numepochs"] == 0:
        problems.append(
            "[DensityNet] NumEpochs: must be at least 1 (the density network is the model)"
        )
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    general = {key: values["General", key] for key in SCHEMA["General"]}
    stage = {
        name: StageConfig(**{key: values[name, key] for key in SCHEMA[name]})
        for name in ("SegNet", "DensityNet")
    }
    return TrainingConfig(
        config_file=path, **general, seg=stage["SegNet"], density=stage["DensityNet"]
    )


def _parse_ini(path, encoding):
    # No interpolation: a '%' in a value (a path, a comment) is just a character.
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    parser.read(path, encoding=encoding)
    return parser


_DISPLAY = {
    "modelname": "ModelName",
    "trainingsetpath": "TrainingSetPath",
    "outputdir": "OutputDir",
    "weightdir": "WeightDir",
    "seed": "Seed",
    "patience": "Patience",
    "reducelrpatience": "ReduceLRPatience",
    "dropoutrate": "DropoutRate",
    "initialmodel": "InitialModel",
    "augment": "Augment",
    "countcalibration": "CountCalibration",
    "devices": "Devices",
    "batchsize": "BatchSize",
    "numepochs": "NumEpochs",
    "validationsplit": "ValidationSplit",
    "adamlr": "AdamLR",
    "lambdafactor": "LambdaFactor",
    "freezesegmentation": "FreezeSegmentation",
    "frameweightscale": "FrameWeightScale",
}


def _display(key):
    return _DISPLAY.get(key, key)


def _read_value(section_proxy, section, key, spec, base, problems):
    kind, default, check = spec
    raw = section_proxy.get(key, fallback=None)
    where = f"[{section}] {_display(key)}"
    if raw is None or raw.strip() == "":
        if default is REQUIRED:
            problems.append(f"{where}: missing (required)")
        return None if default is REQUIRED else default
    raw = raw.strip()
    try:
        if kind is bool:
            value = section_proxy.getboolean(key)
        elif kind is Path and key == "initialmodel":
            value = model_file(raw, base).resolve()
        elif kind is Path:
            value = (base / raw).resolve()
        else:
            value = kind(raw)
    except ValueError:
        expected = {
            int: "a whole number",
            float: "a number",
            bool: "true or false",
            _device_count: "'all' or a whole number",
        }[kind]
        problems.append(f"{where}: {raw!r} is not {expected}")
        return None
    if check is not None and not check[0](value):
        problems.append(f"{where}: {raw!r} must be {check[1]}")
    return value


def _check_paths(values, problems):
    training_set = values["General", "trainingsetpath"]
    if not training_set.is_file():
        problems.append(
            f"[General] TrainingSetPath: {training_set} does not exist (relative paths are read "
            "from the configuration file's folder: give an absolute path, or copy the "
            "configuration beside the data)"
        )
    else:
        try:
            open_compact_set(training_set).close()
        except DefconError as err:
            problems.append(f"[General] TrainingSetPath: {err}")
    initial = values["General", "initialmodel"]
    if initial is not None and not initial.exists():
        problems.append(
            f"[General] InitialModel: {initial} does not exist (relative paths are read from "
            "the configuration file's folder)"
        )
    for key in ("outputdir", "weightdir"):
        folder = values["General", key]
        if folder.exists() and not folder.is_dir():
            problems.append(f"[General] {_display(key)}: {folder} exists and is not a folder")


# ------------------------------------------------------------------- training
