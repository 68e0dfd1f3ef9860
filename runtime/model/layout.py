"""Memory layouts shared by every architecture's loader (Python) and forward pass (IR).

The argument block of one forward call, the model-wide vectors every RWKV has, and how scratch
regions are laid out. Each architecture module (runtime/model/arch/) adds its own per-layer
parameter order, weight pointer order, state rows and scratch regions. Only sizes and types are
baked into the IR; addresses are passed at run time, so the compiled code is the same for every
file of the same shape and types (and so it is cached across runs).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import numpy as np

MAX_THREADS = 64


class GlobalVec(enum.IntEnum):
    """Model-wide vectors stored after the per-layer ones."""

    LN0_W = 0
    LN0_B = 1
    LNOUT_W = 2
    LNOUT_B = 3


class Arg(enum.IntEnum):
    """Slots (int64 each) of the argument block a forward call receives."""

    TOKENS = 0  # int32*
    N_TOKENS = 1
    STATE = 2  # float* (the architecture's state rows): the new state, written
    LOGITS = 3  # float* (V,), or 0 to skip the head
    SCRATCH = 4  # float*
    BARRIER = 5  # barrier memory
    WEIGHTS = 6  # i8** : the architecture's matrices per layer, then emb, head
    PARAMS = 7  # float* : the architecture's vectors per layer, then GlobalVec
    ALL_LOGITS = 8  # float* (n_tokens, V): the logits after every token, or 0 (only LOGITS, for the last)
    STATE_IN = 9  # float*: the state the call starts from, only read (may be STATE itself)


N_ARGS = len(Arg)


def aligned_offsets(sizes: Iterable[tuple[enum.IntEnum, int]]) -> dict[enum.IntEnum, int]:
    """Offsets (in floats) of consecutive regions of the given sizes, each 64-byte aligned."""
    out, pos = {}, 0
    for region, size in sizes:
        out[region] = pos
        pos += (size + 15) // 16 * 16
    return out


def aligned_zeros(n: int, dtype: Any, align: int = 64) -> np.ndarray:
    """n zeros of `dtype` starting on an `align`-byte boundary (scratch and argument blocks the compiled
    code reads with aligned vector loads)."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + align, dtype=np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip : skip + n * itemsize].view(dtype)


def aligned_copy(data: np.ndarray, align: int = 64) -> np.ndarray:
    """`data`, flattened, copied to a buffer of its dtype that starts on an `align`-byte boundary."""
    out = aligned_zeros(data.size, data.dtype, align)
    out[:] = data.reshape(-1)
    return out
