"""Training sets from many simulated stacks, each with its own imaging conditions.

:func:`simulate_training_set` is what ``defcon simulate --stacks N
--training-set FILE`` runs: it simulates ``N`` stacks (conditions drawn per
stack, e.g. around a calibrated microscope by
:func:`defcon.calibrate.like_conditions`), adds each to one TrainingSet with the
brightness threshold of its own conditions, and writes a shuffled compact set
ready for ``defcon train``.
"""

import logging
from pathlib import Path

from .conditions import simulation_parameters, with_overrides, write_conditions
from .datasets import TrainingSet, compact_set, is_compact_set
from .files import atomic_path, check_output
from .progress import progress_bar
from .simulate import simulate

log = logging.getLogger(__name__)


def stack_folder(out_dir, index):
    """``OUT/stack-001``, ... : the folder of the ``index``-th stack (0-based)."""
    return Path(out_dir) / f"stack-{index + 1:03d}"


def simulate_training_set(
    draw,
    out_dir,
    training_set,
    n_stacks,
    n_frames,
    height=64,
    width=64,
    seed=0,
    overrides=None,
    progress=False,
):
    """Simulate stacks with drawn conditions and build them into a compact training set.

    Parameters
    ----------
    draw : callable
        ``draw(seed) -> conditions dict`` (see :mod:`defcon.conditions`);
        stack ``k`` gets ``draw(seed + k)`` and is simulated with seed ``seed + k``.
    out_dir : str or Path
        Gets ``stack-001/`` ... (``stack.tif``, ``frame_logger.csv``,
        ``conditions.json`` each) and ``training.h5``, the TrainingSet of all
        stacks (one dataset per stack, replaced if it exists).
    training_set : str or Path or None
        The compact set to write (shuffled; replaced if it is a compact set);
        None: only simulate.
    n_stacks, n_frames, height, width : int
        Number of stacks and the size of each, frames of ``height x width`` px.
    seed : int
    overrides : dict, optional
        Simulation parameters that replace the drawn ones in every stack.
    progress : bool
        Show progress bars (on a terminal only).

    Returns
    -------
    Path or None
        ``training_set``.

    Raises
    ------
    OverwriteError
        ``training_set`` exists and is not a compact set.
    """
    out_dir = Path(out_dir)
    if training_set is not None:
        check_output(training_set, same_kind=is_compact_set, what="compact set")
    thresholds = []
    for k in progress_bar(range(n_stacks), show=progress, unit="stack", desc="simulate"):
        conditions = with_overrides(draw(seed + k), overrides)
        folder = stack_folder(out_dir, k)
        params = simulation_parameters(conditions)
        simulate(folder, n_frames, height, width, seed=seed + k, **params)
        write_conditions(conditions, folder / "conditions.json")
        thresholds.append(conditions["brightness_threshold"])
    if training_set is None:
        return None
    with atomic_path(out_dir / "training.h5") as tmp:
        with TrainingSet(tmp, "w") as ts:
            for k in progress_bar(range(n_stacks), show=progress, unit="stack", desc="build"):
                folder = stack_folder(out_dir, k)
                ts.add_dataset(
                    folder.name,
                    folder / "stack.tif",
                    folder / "frame_logger.csv",
                    brightness_threshold=thresholds[k],
                )
    log.debug("built %s from %d stacks", out_dir / "training.h5", n_stacks)
    return compact_set(
        out_dir / "training.h5", training_set, shuffle=True, seed=seed, progress=progress
    )
