"""Frame sides the network takes, in one place (a light module: no TensorFlow).

The network halves frames twice (two stride-2 stages) and doubles them back,
so heights and widths must be multiples of :data:`SIDE_MULTIPLE`; prediction
pads other frames and crops the maps back, training refuses them.
"""

#: Frame heights and widths must be multiples of this.
SIDE_MULTIPLE = 4


def padded_side(n):
    """The smallest multiple of :data:`SIDE_MULTIPLE` at or above ``n`` (a frame side).

    Parameters
    ----------
    n : int

    Returns
    -------
    int
    """
    return -(-n // SIDE_MULTIPLE) * SIDE_MULTIPLE
