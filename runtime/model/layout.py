"""Memory layouts shared by the loader (Python) and the compiled forward pass (IR).

Everything the native code touches is described here once: the shape of a model (`ModelSpec`), the
order of per-layer parameters, weight pointers and state rows, the argument block of one forward
call, and the scratch buffer's regions. Only sizes and types are baked into the IR; addresses are
passed at run time, so the compiled code is the same for every file of the same shape and types
(and so it is cached across runs).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from runtime.quant.types import DType

MAX_THREADS = 64


class Vec(enum.IntEnum):
    """Per-layer float32 vectors of n_embd values, in this order in the parameter block."""

    LN1_W = 0
    LN1_B = 1
    LN2_W = 2
    LN2_B = 3
    ATT_MIX_K = 4
    ATT_MIX_V = 5
    ATT_MIX_R = 6
    ATT_DECAY = 7  # -exp(time_decay)
    ATT_FIRST = 8
    FFN_MIX_K = 9
    FFN_MIX_R = 10


class GlobalVec(enum.IntEnum):
    """Model-wide vectors stored after the per-layer ones."""

    LN0_W = 0
    LN0_B = 1
    LNOUT_W = 2
    LNOUT_B = 3


class Mat(enum.IntEnum):
    """Per-layer weight matrices, in this order in the weight pointer table."""

    ATT_KEY = 0
    ATT_VALUE = 1
    ATT_RECEPTANCE = 2
    ATT_OUTPUT = 3
    FFN_KEY = 4
    FFN_RECEPTANCE = 5
    FFN_VALUE = 6


MAT_TENSOR_NAMES = {
    Mat.ATT_KEY: "att.key.weight",
    Mat.ATT_VALUE: "att.value.weight",
    Mat.ATT_RECEPTANCE: "att.receptance.weight",
    Mat.ATT_OUTPUT: "att.output.weight",
    Mat.FFN_KEY: "ffn.key.weight",
    Mat.FFN_RECEPTANCE: "ffn.receptance.weight",
    Mat.FFN_VALUE: "ffn.value.weight",
}


class StateRow(enum.IntEnum):
    """Rows of one layer's state (the official implementation's order: 5 rows per layer)."""

    ATT_XX = 0
    AA = 1
    BB = 2
    PP = 3
    FFN_XX = 4


STATE_ROWS = len(StateRow)
PP_INITIAL = -1e30


class Arg(enum.IntEnum):
    """Slots (int64 each) of the argument block a forward call receives."""

    TOKENS = 0  # int32*
    N_TOKENS = 1
    STATE = 2  # float* (5·L, C), updated in place
    LOGITS = 3  # float* (V,), or 0 to skip the head
    SCRATCH = 4  # float*
    BARRIER = 5  # barrier memory
    WEIGHTS = 6  # i8** : 7 per layer, then emb, head
    PARAMS = 7  # float* : 11·C per layer, then 4·C global
    ALL_LOGITS = 8  # float* (n_tokens, V): the logits after every token, or 0 (only LOGITS, for the last)


N_ARGS = len(Arg)


class Region(enum.IntEnum):
    """Regions of the scratch buffer; all but HID and the per-thread ones hold chunk × n_embd floats."""

    X = 0
    XA = 1
    XK = 2
    XV = 3
    XR = 4
    K = 5
    V = 6
    R = 7
    OUT = 8
    R2 = 9
    TMP = 10
    HID = 11  # chunk × n_ffn
    PRIVATE = 12  # MAX_THREADS × n_embd, one row per thread
    LNOUT = 13  # n_embd


@dataclass(frozen=True)
class ModelSpec:
    """What the compiled code depends on: dimensions and each matrix's type."""

    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    layer_types: tuple[tuple[DType, ...], ...]  # per layer, indexed by Mat
    emb_type: DType
    head_type: DType
    ln0_folded: bool
    chunk: int = 128

    @property
    def state_shape(self) -> tuple[int, int]:
        return (STATE_ROWS * self.n_layer, self.n_embd)

    @property
    def params_floats(self) -> int:
        return (len(Vec) * self.n_layer + len(GlobalVec)) * self.n_embd

    def region_offset(self, region: Region) -> int:
        """Offset of `region` in the scratch buffer, in floats."""
        return _region_offsets(self)[region]

    @property
    def scratch_floats(self) -> int:
        return _region_offsets(self)[Region.LNOUT] + self.n_embd

    @property
    def weight_slots(self) -> int:
        return len(Mat) * self.n_layer + 2

    @property
    def emb_slot(self) -> int:
        return len(Mat) * self.n_layer

    @property
    def head_slot(self) -> int:
        return len(Mat) * self.n_layer + 1


def _region_offsets(spec: ModelSpec) -> dict[Region, int]:
    c, ch = spec.n_embd, spec.chunk
    sizes = {r: ch * c for r in Region}
    sizes[Region.HID] = ch * spec.n_ffn
    sizes[Region.PRIVATE] = MAX_THREADS * c
    sizes[Region.LNOUT] = c
    out, pos = {}, 0
    for r in Region:
        out[r] = pos
        pos += (sizes[r] + 15) // 16 * 16  # keep every region 64-byte aligned
    return out
