"""H3 cell arithmetic by integer bit operations (MicroPython-compatible core).

An H3 cell index is a 64-bit integer: bit 63 reserved (0), bits 59-62 mode
(1 = cell), bits 56-58 reserved (0), bits 52-55 resolution, bits 45-51 base
cell (0-121), then fifteen 3-bit digits (resolution 1 at bits 42-44, ...,
resolution 15 at bits 0-2). Digits finer than the resolution are 7. The parent
of a cell at a coarser resolution is the same index with the resolution field
lowered and the finer digits set to 7, so "child within parent" needs no
library: only the region capability's subset check uses it.
"""

MAX_RES = 15
_PENTAGONS = (4, 14, 24, 38, 49, 58, 63, 72, 83, 97, 107, 117)


def is_valid_cell(cell):
    """True when ``cell`` is a well-formed H3 cell index."""
    if cell < 0 or cell >> 64 or cell >> 63:
        return False
    if (cell >> 59) & 0xF != 1 or (cell >> 56) & 0x7:
        return False
    res = (cell >> 52) & 0xF
    base = (cell >> 45) & 0x7F
    if base > 121:
        return False
    first_nonzero = 0
    for r in range(1, MAX_RES + 1):
        digit = (cell >> ((MAX_RES - r) * 3)) & 0x7
        if r <= res:
            if digit == 7:
                return False
            if not first_nonzero and digit:
                first_nonzero = digit
        elif digit != 7:
            return False
    # pentagons have no K-axis (digit 1) subsequence right after the base cell
    if base in _PENTAGONS and first_nonzero == 1:
        return False
    return True


def parent(cell, res):
    """The ancestor of ``cell`` at resolution ``res`` (<= the cell's own)."""
    cell = (cell & ~(0xF << 52)) | (res << 52)
    return cell | ((1 << ((MAX_RES - res) * 3)) - 1)


def is_within(child, ancestor):
    """True when ``child`` equals ``ancestor`` or lies inside it."""
    res = (ancestor >> 52) & 0xF
    if (child >> 52) & 0xF < res:
        return False
    return parent(child, res) == ancestor
