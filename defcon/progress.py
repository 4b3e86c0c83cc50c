"""Progress: bars on a terminal, quiet in logs, pipes and batch jobs."""

import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, show=True, **kwargs):
    """A tqdm progress bar, drawn only when ``show`` and stderr is a terminal.

    Parameters
    ----------
    iterable : iterable, optional
        As for ``tqdm``.
    show : bool
        False never draws; True draws on a terminal only (a bar redrawn into a
        log file is thousands of lines of noise).
    **kwargs
        Passed to ``tqdm`` (``total``, ``unit``, ``desc``, ...).

    Returns
    -------
    tqdm.tqdm
    """
    return tqdm(iterable, disable=None if show else True, **kwargs)


def keras_verbosity(verbose):
    """Keras ``fit`` verbosity: a bar (1) on a terminal, else one line per epoch (2).

    Parameters
    ----------
    verbose : int
        0 silent, 1 a progress bar (one line per epoch when stdout is not a
        terminal), 2 one line per epoch.

    Returns
    -------
    int
    """
    return 2 if verbose == 1 and not sys.stdout.isatty() else verbose
