"""Where each quantized type keeps its float16 block scales, and the first damaged one of a row.

A NaN or infinite scale makes every value of its block NaN or infinite when decoded; naming the scale
(rather than only the first bad value) tells a user the file is damaged, not the weights.
"""

from __future__ import annotations

import numpy as np

from runtime.quant.types import DType

# (field name, byte offset in the block) of every float16 scale, per ggml's block layouts
SCALE_FIELDS: dict[DType, tuple[tuple[str, int], ...]] = {
    DType.Q4_0: (("d", 0),),
    DType.Q5_0: (("d", 0),),
    DType.Q8_0: (("d", 0),),
    DType.Q4_1: (("d", 0), ("m", 2)),
    DType.Q5_1: (("d", 0), ("m", 2)),
    DType.Q2_K: (("d", 80), ("dmin", 82)),
    DType.Q3_K: (("d", 108),),
    DType.Q4_K: (("d", 0), ("dmin", 2)),
    DType.Q5_K: (("d", 0), ("dmin", 2)),
    DType.Q6_K: (("d", 208),),
}


def block_scales(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """float32 (n_blocks, n_fields) scales of the blocks in `raw` (uint8, whole blocks, any shape)."""
    blocks = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, dtype.block_bytes)
    cols = [np.ascontiguousarray(blocks[:, at : at + 2]).view("<f2") for _, at in SCALE_FIELDS[dtype]]
    return np.concatenate(cols, axis=1).astype(np.float32)


def first_bad_scale(raw_row: np.ndarray, dtype: DType) -> str | None:
    """'super-block 3's scale dmin is NaN' for the first non-finite scale in one stored row, or None
    (also for types without block scales)."""
    if dtype not in SCALE_FIELDS:
        return None
    scales = block_scales(raw_row, dtype)
    bad = np.argwhere(~np.isfinite(scales))
    if not bad.size:
        return None
    block, field = (int(i) for i in bad[0])
    value = scales[block, field]
    what = "NaN" if np.isnan(value) else "infinite"
    kind = "super-block" if dtype.block_size == 256 else "block"
    return f"its {dtype.name} {kind} {block}'s scale {SCALE_FIELDS[dtype][field][0]} is {what}"
