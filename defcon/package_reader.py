"""Reading model packages: checksums first, safe paths, bounded cost, no code from the package.

A package (see :mod:`defcon.package`) is a bioimage.io zip or folder. Every file
its ``rdf.yaml`` lists is hashed before anything is loaded; zip entries that
are absolute, hold ``..`` or a backslash, are links, appear twice or are not
listed in ``rdf.yaml`` are refused; only a temporary folder is ever written.
The cost of opening a package is bounded before anything is extracted:
``rdf.yaml`` at most :data:`MAX_RDF_BYTES` and parsed without YAML aliases;
at most :data:`MAX_PACKAGE_BYTES` uncompressed (``DEFCON_PACKAGE_MAX_BYTES`` in
the environment changes it); no entry compressed more than :data:`MAX_RATIO`
times (zip bombs); every entry extracted no larger than it declares.
"""

import collections
import contextlib
import importlib
import logging
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from .errors import IntegrityError, ModelFileError, UnsupportedFileError
from .files import existing_file, sha256_file

log = logging.getLogger(__name__)

PROVENANCE_FILE = "training_provenance.json"
KERAS_FILE = "defcon_model.keras"
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml", "model.yaml")
#: Largest rdf.yaml read, bytes.
MAX_RDF_BYTES = 1 << 20
#: Largest total uncompressed size of a package, bytes (2 GiB).
MAX_PACKAGE_BYTES = 2 << 30
#: Largest compression ratio of an entry over 1 MiB.
MAX_RATIO = 200


def require_module(
    module, error=ModelFileError, needed_for="model packages and ONNX", extra="bioimageio"
):
    """Import an optional dependency, or raise ``error`` saying how to install it.

    ``needed_for`` says what the module is for and ``extra`` names the optional
    dependencies (``pip install 'defcon[extra]'``) that bring it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise error(
            f"'{module}' is needed for {needed_for}; install the optional "
            f"dependencies: pip install 'defcon[{extra}]'"
        ) from err


# --------------------------------------------------------------------------- reading
def _check_member(package, name):
    posix = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or posix.is_absolute()
        or re.match(r"^[A-Za-z]:", name)
        or ".." in posix.parts
    ):
        raise IntegrityError(
            f"{package}: unsafe path '{name}' in the package (absolute, '..' "
            "or backslash); refusing the package"
        )


def _rdf_name(names):
    top = [n for n in names if "/" not in n]
    return next((n for n in RDF_NAMES if n in top), None) or next(
        (n for n in sorted(top) if n.endswith((".rdf.yaml", ".bioimageio.yaml"))), None
    )


@contextlib.contextmanager
def _opened(path):
    """Yield (folder, rdf dict, rdf file name) of a package folder or zip.

    A zip is checked, then its listed entries are extracted to a temporary
    folder that is removed afterwards.
    """
    path = existing_file(path, "model package")
    with tempfile.TemporaryDirectory(prefix="defcon-package-") as tmp:
        if path.is_dir():
            root = path.resolve()
            rdf_name = _rdf_name([p.name for p in root.iterdir() if p.is_file()])
            _require_rdf(path, rdf_name)
            rdf = _parse_rdf(
                path,
                rdf_name,
                (root / rdf_name).stat().st_size,
                lambda: (root / rdf_name).read_bytes(),
            )
        elif zipfile.is_zipfile(path):
            root = Path(tmp)
            with zipfile.ZipFile(path) as archive:
                infos = _checked_entries(path, archive)
                rdf_name = _rdf_name([info.filename for info in infos])
                _require_rdf(path, rdf_name)
                rdf_info = archive.getinfo(rdf_name)
                rdf = _parse_rdf(path, rdf_name, rdf_info.file_size, lambda: archive.read(rdf_info))
                listed = {PurePosixPath(s).as_posix() for s in _listed_files(rdf)} | {rdf_name}
                for info in infos:
                    if info.is_dir():
                        continue
                    if info.filename not in listed:
                        raise IntegrityError(
                            f"{path}: entry '{info.filename}' is not listed in "
                            f"{rdf_name}; refusing the package"
                        )
                    _extract(path, archive, info, root)
        else:
            raise UnsupportedFileError(
                f"{path}: not a model package (a .zip file or a folder holding rdf.yaml)"
            )
        yield root, rdf, rdf_name


def _require_rdf(path, rdf_name):
    if rdf_name is None:
        raise UnsupportedFileError(
            f"{path}: no {' / '.join(RDF_NAMES)}, so not a bioimage.io package"
        )


def _checked_entries(path, archive):
    """The archive's entries after the path, link, duplicate, size and ratio checks."""
    infos = archive.infolist()
    counts = collections.Counter(info.filename for info in infos)
    limit = int(os.environ.get("DEFCON_PACKAGE_MAX_BYTES", MAX_PACKAGE_BYTES))
    total = 0
    for info in infos:
        _check_member(path, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16) or counts[info.filename] > 1:
            raise IntegrityError(
                f"{path}: entry '{info.filename}' is a symbolic "
                "link or appears twice; refusing the package"
            )
        if info.file_size > 1 << 20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise IntegrityError(
                f"{path}: entry '{info.filename}' expands {info.file_size} bytes "
                f"from {info.compress_size} (a zip bomb?); refusing the package"
            )
        total += info.file_size
    if total > limit:
        raise IntegrityError(
            f"{path}: {total / 2**20:,.0f} MiB uncompressed, over the "
            f"{limit / 2**20:,.0f} MiB limit (DEFCON_PACKAGE_MAX_BYTES); "
            "refusing the package"
        )
    return infos


def _extract(path, archive, info, root):
    """Copy one entry, refusing it if it holds more bytes than it declares."""
    target = root / info.filename
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(info) as source, open(target, "wb") as out:
        copied = 0
        while chunk := source.read(1 << 20):
            copied += len(chunk)
            if copied > info.file_size:
                raise IntegrityError(
                    f"{path}: entry '{info.filename}' holds more than the "
                    f"{info.file_size} bytes it declares; refusing the package"
                )
            out.write(chunk)


def _parse_rdf(path, rdf_name, size, read):
    """Parse rdf.yaml within :data:`MAX_RDF_BYTES`, without aliases."""
    yaml = require_module("yaml")
    if size > MAX_RDF_BYTES:
        raise ModelFileError(
            f"{path}: {rdf_name} is {size} bytes, over the {MAX_RDF_BYTES} "
            "bytes a model description needs; refusing the package"
        )

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ModelFileError(
                    f"{path}: {rdf_name} uses YAML aliases (*name), which "
                    "model descriptions do not need; refusing the package"
                )
            return super().compose_node(parent, index)

    try:
        rdf = yaml.load(read().decode("utf-8"), Loader=NoAliasLoader)  # noqa: S506 (safe loader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise ModelFileError(
            f"{path}: {rdf_name} is not valid YAML: "
            f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err
    if not isinstance(rdf, dict):
        raise ModelFileError(f"{path}: {rdf_name} does not hold a mapping")
    return rdf


@contextlib.contextmanager
def _fields_of(path, rdf_name):
    """Turn a malformed rdf field (a list where a mapping belongs, ...) into one line."""
    try:
        yield
    except (AttributeError, TypeError, KeyError, RecursionError) as err:
        raise ModelFileError(
            f"{path}: {rdf_name} has a malformed field ({type(err).__name__}: "
            f"{err}); not a package defcon wrote"
        ) from err


def _listed_files(rdf):
    """{source: sha256 or None} of every file rdf.yaml names."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("source"), str):
                found[node["source"]] = found.get(node["source"]) or node.get("sha256")
            nodes = node.values()
        else:
            nodes = node if isinstance(node, list) else ()
        for value in nodes:
            walk(value)

    walk(rdf)
    for key in ("documentation", "covers"):  # these may also be plain file names
        for value in rdf.get(key) if isinstance(rdf.get(key), list) else [rdf.get(key)]:
            if isinstance(value, str):
                found.setdefault(value, None)
    return found


def _verify(path, root, rdf, rdf_name):
    """Check every listed file's SHA-256: ``{source: (status, detail)}``.

    Status is 'ok', 'mismatch', 'missing', 'unchecked' (no sha256 listed) or
    'remote' (a URL, not fetched).
    """
    results = {}
    for source, expected in _listed_files(rdf).items():
        if "://" in source:
            results[source] = ("remote", "")
            continue
        _check_member(path, source)
        local = (root / source).resolve()
        if not local.is_relative_to(root.resolve()):
            raise IntegrityError(f"{path}: '{source}' leads outside the package")
        if not local.is_file():
            results[source] = ("missing", f"listed in {rdf_name}, not in the package")
        elif not expected:
            results[source] = ("unchecked", f"no sha256 in {rdf_name}")
        elif (found := sha256_file(local)) != str(expected).lower():
            results[source] = ("mismatch", f"SHA-256 is {found}, {rdf_name} lists {expected}")
        else:
            results[source] = ("ok", "")
    return results


def _keras_source(rdf):
    defcon = (rdf.get("config") or {}).get("defcon") or {}
    weights = rdf.get("weights") or {}
    candidates = (
        [defcon.get("keras_file")]
        + [(weights.get(k) or {}).get("source") for k in ("keras_v3", "keras_hdf5")]
        + [
            a.get("source")
            for a in rdf.get("attachments") or ()
            if isinstance(a, dict) and str(a.get("source")).endswith(".keras")
        ]
    )
    return next((c for c in candidates if isinstance(c, str) and "://" not in c), None)


def is_package(path):
    """Tell whether ``path`` is a bioimage.io package.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
        True for a zip file or a folder with ``rdf.yaml`` (or ``bioimageio.yaml``,
        ``model.yaml``, ``*.bioimageio.yaml``) at its top level.
    """
    path = Path(path)
    try:
        if path.is_dir():
            return _rdf_name([p.name for p in path.iterdir() if p.is_file()]) is not None
        if path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return _rdf_name(archive.namelist()) is not None
    except (OSError, zipfile.BadZipFile):
        pass
    return False


def load_package(path):
    """Load the network of a model package, after checking every file's SHA-256.

    Every file ``rdf.yaml`` lists is hashed first; a mismatch or a missing file
    refuses the package. Zip entries with absolute paths, ``..``, backslashes,
    symbolic links or duplicate names are refused before anything is extracted
    (to a temporary folder). The Keras file is copied, hashed again and loaded
    in Keras safe mode: no code from the package runs.

    Parameters
    ----------
    path : str or Path
        A package zip (see :func:`export_bioimageio`) or its unpacked folder.

    Returns
    -------
    FCN
        The packaged network; its predictions equal the exported model's.

    Raises
    ------
    IntegrityError
        A file does not match its SHA-256 or is missing (the message names
        it), the Keras file has no SHA-256, or a path is unsafe.
    ModelFileError
        No Keras model in the package, or not one defcon can load.
    UnsupportedFileError, MissingFileError
        ``path`` is not a package, or does not exist.

    Examples
    --------
    >>> model = load_package("quickstart.zip")  # doctest: +SKIP
    >>> density = model.predict_stack(frames)  # doctest: +SKIP
    """
    from .networks import FCN

    with _opened(path) as (root, rdf, rdf_name), _fields_of(path, rdf_name):
        results = _verify(path, root, rdf, rdf_name)
        bad = [
            f"{source}: {detail}"
            for source, (status, detail) in results.items()
            if status in ("mismatch", "missing")
        ]
        if bad:
            raise IntegrityError(f"{path}: refusing the package: " + "; ".join(bad))
        source = _keras_source(rdf)
        if source is None:
            raise ModelFileError(
                f"{path}: no Keras model in the package (defcon loads the "
                f"attached {KERAS_FILE} or keras weights)"
            )
        if results[source][0] != "ok":
            raise IntegrityError(
                f"{path}: {source} is not verified ({results[source][1]}); refusing to load it"
            )
        with tempfile.TemporaryDirectory(prefix="defcon-model-") as tmp:
            local = Path(tmp) / PurePosixPath(source).name
            shutil.copyfile(root / source, local)
            if sha256_file(local) != str(_listed_files(rdf)[source]).lower():
                raise IntegrityError(f"{path}: {source} changed while being read")
            try:
                return FCN.from_file(local)
            except ModelFileError as err:
                raise ModelFileError(f"{path}: {source}: {err}") from err


def describe_package(path):
    """Describe a model package (for ``defcon info``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        Name, date, inputs and outputs, weight formats, the checksum status of
        every listed file and the training provenance, several lines.

    Raises
    ------
    IntegrityError
        The package holds an unsafe path.
    UnsupportedFileError, MissingFileError, ModelFileError
        ``path`` is not a readable package.
    """
    with _opened(path) as (root, rdf, rdf_name), _fields_of(path, rdf_name):
        results = _verify(path, root, rdf, rdf_name)
        return _description(path, rdf, results)


def _description(path, rdf, results):
    authors = ", ".join(str(a.get("name")) for a in rdf.get("authors") or () if isinstance(a, dict))
    lines = [
        f"{path}: bioimage.io {rdf.get('type', '?')} package '{rdf.get('name')}' "
        f"(format {rdf.get('format_version', '?')})",
        f"  created: {rdf.get('timestamp', 'unknown')}",
        f"  authors: {authors or 'none given'}; license: {rdf.get('license', 'none')}",
    ]
    for kind in ("inputs", "outputs"):
        for tensor in rdf.get(kind) or ():
            lines.append(
                f"  {kind[:-1]} '{tensor.get('id')}': axes "
                f"{', '.join(_axis(a) for a in tensor.get('axes') or ())}; "
                f"{(tensor.get('data') or {}).get('type', '?')}"
            )
    weights = [
        kind
        + "".join(
            f", {k.split('_')[0]} {e[k]}"
            for k in ("opset_version", "tensorflow_version", "parent")
            if k in e
        )
        for kind, e in (rdf.get("weights") or {}).items()
        if isinstance(e, dict)
    ]
    lines.append(f"  weights: {'; '.join(weights) or 'none'}")
    lines.append(f"  defcon model: {_keras_source(rdf) or 'none (defcon cannot load it)'}")
    problems = [
        f"{s}: {st.upper()}" + (f" ({d})" if d else "")
        for s, (st, d) in results.items()
        if st != "ok"
    ]
    lines.append(
        f"  checksums: all {len(results)} files OK"
        if not problems
        else f"  checksums: {len(results) - len(problems)} of {len(results)} files OK; "
        + "; ".join(problems)
    )
    training = ((rdf.get("config") or {}).get("defcon") or {}).get("training") or {}
    lines += [
        f"  training {key}: {training[key]}"
        for key in ("config", "history", "curves")
        if key in training
    ] or ["  training: not recorded"]
    if isinstance(training.get("training_set"), dict):
        lines.append(
            f"  training set: {training['training_set'].get('file')} "
            f"(sha256 {training['training_set'].get('sha256')})"
        )
    lines += [
        f"    source '{s.get('dataset')}': {s.get('file')} (sha256 {s.get('sha256')})"
        for s in training.get("sources") or ()
        if isinstance(s, dict)
    ]
    return "\n".join(lines)


def _axis(axis):
    size, label = axis.get("size"), str(axis.get("id") or axis.get("type"))
    if isinstance(size, dict) and "min" in size:
        return f"{label} (min {size['min']}, step {size.get('step')})"
    if isinstance(size, dict) and "tensor_id" in size:
        return f"{label} (= {size['tensor_id']}.{size.get('axis_id')})"
    return f"{label} {axis['channel_names']}" if axis.get("channel_names") else label
