"""DEFCoN's training module name: ``from defcon import training; training.train(config)``.

Kept so original scripts and notebooks run; new code uses :func:`defcon.train.train`
(``defcon train CONFIG.ini`` on the command line). ``python -m defcon.training
CONFIG.ini`` works as DEFCoN's ``python training.py CONFIG.ini`` did.
"""

import sys

from .errors import ConfigError


def train(config_file, architecture=None, **kwargs):
    """Train a DEFCoN network as a configuration file says.

    Parameters
    ----------
    config_file : str or Path
        The ``.ini`` file; original DEFCoN files run unchanged.
    architecture : None or defcon.models.DEFCoN
        DEFCoN's choice of architecture function; defcon trains the DEFCoN
        architecture only.
    **kwargs
        Passed to :func:`defcon.train.train` (``verbose``, ``overwrite``).

    Returns
    -------
    dict
        See :func:`defcon.train.train`.

    Raises
    ------
    ConfigError
        ``architecture`` is another function.
    """
    from . import models
    from .train import train as train_from_config

    if architecture not in (None, models.DEFCoN):
        raise ConfigError(
            f"train(architecture={getattr(architecture, '__name__', architecture)}):"
            " defcon trains the DEFCoN architecture only; drop architecture= and "
            "use defcon.train.train(config_file)"
        )
    return train_from_config(config_file, **kwargs)


if __name__ == "__main__":
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
