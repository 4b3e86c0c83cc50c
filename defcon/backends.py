"""The Keras backend defcon runs on: what needs TensorFlow, devices, a system summary.

Keras fixes its backend when it is first imported (``KERAS_BACKEND``, else
``~/.keras/keras.json``, else TensorFlow). Training and prediction run on any
backend; the exports for TensorFlow runtimes (Fiji, SavedModel, ONNX) and the
TensorFlow inference engine need the TensorFlow backend
(:func:`require_tensorflow`).
"""

import contextlib
import json
import os
import platform
import sys

from .errors import BackendError, ParameterError

#: Backends defcon is tested on (``KERAS_BACKEND`` values).
BACKENDS = ("tensorflow", "jax", "torch")
DEVICES = ("cpu", "gpu")
#: How to install each backend, for error messages and ``defcon info --system``.
INSTALL = {
    "tensorflow": 'pip install "tensorflow>=2.16"',
    "jax": 'pip install "defcon[jax]" (GPU: pip install -U "jax[cuda12]")',
    "torch": 'pip install "defcon[torch]"',
}


def configured_backend():
    """The Keras backend in use, or the one Keras will use, without importing Keras.

    Returns
    -------
    str
        ``keras.backend.backend()`` when Keras is imported; otherwise
        ``KERAS_BACKEND``, the ``backend`` of Keras' ``keras.json``, or 'tensorflow'.
    """
    if "keras" in sys.modules:
        return sys.modules["keras"].backend.backend()
    if "KERAS_BACKEND" in os.environ:
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def is_tensorflow():
    """True when Keras runs on TensorFlow."""
    return configured_backend() == "tensorflow"


def require_tensorflow(what):
    """Check that TensorFlow is the Keras backend and can be imported.

    Parameters
    ----------
    what : str
        What needs it, for the message (e.g. 'the Fiji export').

    Returns
    -------
    module
        ``tensorflow``.

    Raises
    ------
    BackendError
        Another backend is active, or TensorFlow is not installed.
    """
    active = configured_backend()
    if active != "tensorflow":
        raise BackendError(
            f"{what} needs TensorFlow, but Keras runs on {active} (KERAS_BACKEND={active}): "
            "run it with KERAS_BACKEND=tensorflow, the default backend (installed with "
            f"{INSTALL['tensorflow']}); training and prediction also work on {active}"
        )
    try:
        import tensorflow
    except ImportError as err:
        raise BackendError(
            f"{what} needs TensorFlow, which is not installed: {INSTALL['tensorflow']}, "
            "or train and predict with KERAS_BACKEND=jax or torch"
        ) from err
    return tensorflow


def list_devices(kind=None):
    """The devices of the active backend.

    Parameters
    ----------
    kind : {'cpu', 'gpu'}, optional
        Only devices of this kind (default all).

    Returns
    -------
    list of tuple (str, str)
        ``(kind, name)`` pairs, e.g. ``('gpu', 'cuda:0')``.
    """
    backend = configured_backend()
    found = []
    if backend == "tensorflow":
        import tensorflow as tf

        for device in tf.config.list_physical_devices():
            if device.device_type in ("CPU", "GPU"):
                found.append((device.device_type.lower(), device.name))
    elif backend == "jax":
        import jax

        for device in jax.devices() + _jax_cpus():
            kind_ = "cpu" if device.platform == "cpu" else "gpu"
            name = f"{device.platform}:{device.id}"
            if device.device_kind != device.platform:
                name += f" {device.device_kind}"
            found.append((kind_, name))
        found = list(dict.fromkeys(found))
    elif backend == "torch":
        import torch

        found.append(("cpu", "cpu"))
        for i in range(torch.cuda.device_count()):
            found.append(("gpu", f"cuda:{i} {torch.cuda.get_device_name(i)}"))
        if not torch.cuda.is_available() and torch.backends.mps.is_available():
            found.append(("gpu", "mps"))  # Apple silicon
    return [d for d in found if kind is None or d[0] == kind]


def _jax_cpus():
    import jax

    try:
        return jax.devices("cpu")
    except RuntimeError:  # JAX_PLATFORMS excludes the CPU
        return []


def check_device(device):
    """``device`` if it is 'cpu', 'gpu' or None.

    Raises
    ------
    ParameterError
        Any other value.
    """
    if device not in (None, *DEVICES):
        raise ParameterError(f"device must be one of {DEVICES} or None, got {device!r}")
    return device


def device_scope(device):
    """A context in which Keras (and defcon's engines) run on ``device``.

    Parameters
    ----------
    device : {'cpu', 'gpu'} or None
        None keeps the backend's default (the first GPU when there is one).
        TensorFlow: ``tf.device('/CPU:0')`` or ``'/GPU:0'``; JAX:
        ``jax.default_device``; PyTorch: ``keras.device('cpu')``, ``'cuda'`` or
        (Apple silicon) ``'mps'``.

    Returns
    -------
    context manager

    Raises
    ------
    ParameterError
        ``device`` is not 'cpu', 'gpu' or None.
    BackendError
        'gpu' asked for and the backend sees none.
    """
    if check_device(device) is None:
        return contextlib.nullcontext()
    backend = configured_backend()
    if device == "gpu" and not list_devices("gpu"):
        raise BackendError(
            f"--device gpu: {backend} sees no GPU on this machine (devices: "
            f"{', '.join(name for _, name in list_devices()) or 'none'}); install the "
            f"backend's GPU build ({_gpu_install(backend)}) or use --device cpu"
        )
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.device(f"/{device.upper()}:0")
    if backend == "jax":
        import jax

        return jax.default_device(jax.devices("cpu" if device == "cpu" else None)[0])
    import keras

    if device == "cpu":
        return keras.device("cpu")
    return keras.device("mps" if list_devices("gpu")[0][1] == "mps" else "cuda")


def _gpu_install(backend):
    if backend == "torch" and "torch" in sys.modules and sys.modules["torch"].version.cuda:
        cuda = sys.modules["torch"].version.cuda
        return f"this torch has CUDA {cuda}; check the NVIDIA driver with nvidia-smi"
    return {
        "tensorflow": 'pip install "tensorflow[and-cuda]"',
        "jax": 'pip install -U "jax[cuda12]"',
        # PyPI's Linux wheel bundles CUDA; the CPU-only one comes from download.pytorch.org.
        "torch": 'pip install "torch>=2.2", the Linux wheel from PyPI, not the CPU-only one',
    }.get(backend, "see the backend's documentation")


def bfloat16_support():
    """How the first device of the backend runs bfloat16, in words.

    Returns
    -------
    str
        For a GPU, native from compute capability 8.0 (Ampere); for a CPU,
        native with AMX or AVX512-BF16, else emulated (slower than float32).
    """
    gpus = list_devices("gpu")
    if gpus:
        capability = _gpu_capability()
        if capability is None:
            return f"GPU {gpus[0][1]}: compute capability unknown"
        native = capability >= (8, 0)
        return f"GPU compute capability {capability[0]}.{capability[1]}: " + (
            "native" if native else "emulated (below 8.0)"
        )
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return "CPU: native (AMX)"
    if "avx512_bf16" in flags:
        return "CPU: native (AVX512-BF16)"
    return "CPU: emulated (no AMX or AVX512-BF16; slower than float32)"


def _gpu_capability():
    """(major, minor) of the first GPU, or None."""
    backend = configured_backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpu = tf.config.list_physical_devices("GPU")[0]
            return tuple(tf.config.experimental.get_device_details(gpu)["compute_capability"])
        if backend == "jax":
            import jax

            return tuple(int(p) for p in jax.devices("gpu")[0].compute_capability.split("."))
        if backend == "torch":
            import torch

            return tuple(torch.cuda.get_device_capability(0))
    except (AssertionError, AttributeError, IndexError, KeyError, RuntimeError, ValueError):
        return None  # torch raises AssertionError when built without CUDA
    return None


def _cpu_flags():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def backend_version(backend=None):
    """The version of the backend's library, or 'not installed'."""
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(
        backend or configured_backend()
    )
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:  # PackageNotFoundError, or an unknown backend (module None)
        return "not installed"


def system_summary():
    """``defcon info --system``: versions, the backend, its devices and bfloat16.

    Returns
    -------
    str
        Several lines of text.
    """
    import keras

    from . import __version__

    backend = keras.backend.backend()
    source = (
        f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}"
        if "KERAS_BACKEND" in os.environ
        else "keras.json or the default"
    )
    lines = [
        f"defcon {__version__}, Keras {keras.__version__}, Python {platform.python_version()} "
        f"({platform.machine()})",
        f"backend: {backend} {backend_version(backend)} (from {source}; choose with "
        f"KERAS_BACKEND={'|'.join(BACKENDS)})",
        "other backends: "
        + ", ".join(f"{b} {backend_version(b)}" for b in BACKENDS if b != backend),
    ]
    lines += [f"device: {kind} {name}" for kind, name in list_devices()]
    if not list_devices("gpu"):
        lines.append(f"device: no GPU found (GPU build of {backend}: {_gpu_install(backend)})")
    lines.append(f"bfloat16: {bfloat16_support()}")
    engine = {
        "tensorflow": "TensorFlow engine (defcon.engine)",
        "jax": "Keras ops under jax.jit",
        "torch": "Keras ops, eager, no autograd",
    }.get(backend, "Keras ops")
    lines.append(f"prediction: {engine}; TensorFlow exports: " + _exports_status(backend))
    return "\n".join(lines)


def _exports_status(backend):
    if backend != "tensorflow":
        return "need KERAS_BACKEND=tensorflow"
    return "available"
