"""Scan every tensor of a model file for values that are not finite or out of range.

`rwkv-tui inspect --verify FILE` and the app's model screen run it when a model produced NaN
(`DamagedModelError`) or a download is in doubt. Each tensor is read a block of rows at a time,
decoded to float32 (quantized blocks through their scales, so a damaged scale shows), and the first
value that is NaN, infinite or beyond `MAX_PLAUSIBLE` is reported with its tensor, row and column,
and the block scale that caused it when one is NaN or infinite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime.formats.checkpoint import Checkpoint
from runtime.progress import CancelToken, Progress, ProgressCallback, no_progress
from runtime.quant.scales import first_bad_scale

# No trained RWKV weight comes near this (the largest are -exp(time_decay), a few 10^4); a flipped
# exponent bit in a float lands far above it, and such a value overflows the forward pass's sums.
MAX_PLAUSIBLE = 1e9
CHUNK_VALUES = 1 << 20  # values decoded at a time


@dataclass(frozen=True)
class Finding:
    """The first damaged value found: where it is and what is wrong with it."""

    tensor: str
    row: int
    column: int
    value: float
    cause: str | None = None  # e.g. "its Q4_K super-block 2's scale dmin is NaN"

    @property
    def problem(self) -> str:
        if np.isnan(self.value):
            return "not a number"
        if np.isinf(self.value):
            return "infinite"
        return f"beyond ±{MAX_PLAUSIBLE:g}, far outside any trained weight"

    def describe(self) -> str:
        text = f"tensor '{self.tensor}' row {self.row}, column {self.column} holds {self.value:.6g}: {self.problem}"
        return f"{text} ({self.cause})" if self.cause else text


def verify_tensors(
    ckpt: Checkpoint, progress: ProgressCallback = no_progress, cancel: CancelToken | None = None
) -> Finding | None:
    """The first value of `ckpt` (in file order) that is not finite or beyond MAX_PLAUSIBLE, or None."""
    total = ckpt.tensor_bytes
    done = 0
    progress(Progress("verifying", 0, total))
    for name, tensor in ckpt.tensors.items():
        step = max(1, CHUNK_VALUES // max(1, tensor.n_cols))
        for start in range(0, tensor.n_rows, step):
            stop = min(start + step, tensor.n_rows)
            rows = tensor.read_rows(start, stop)
            with np.errstate(invalid="ignore"):
                bad = ~(np.abs(rows) <= MAX_PLAUSIBLE)  # NaN compares false
            if bad.any():
                r, c = (int(i) for i in np.argwhere(bad)[0])
                cause = first_bad_scale(tensor.read_raw_rows(start + r, start + r + 1), tensor.dtype)
                return Finding(name, start + r, c, float(rows[r, c]), cause)
            done += (stop - start) * tensor.row_bytes
            progress(Progress("verifying", done, total))
            if cancel is not None:
                cancel.raise_if_cancelled()
    return None
