"""Checks and reads every architecture's loader shares: a matrix's type, a vector's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import Checkpoint
from runtime.formats.tensors import LazyTensor
from runtime.quant.types import DType

_MATRIX_ORDER = (DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0)
MATRIX_TYPES = frozenset(_MATRIX_ORDER)
EMB_TYPES = frozenset({DType.F32, DType.F16})


def matrix_type(path: Path, tensor: LazyTensor, allowed: frozenset[DType] = MATRIX_TYPES) -> DType:
    """The type of a matrix native code reads in place; refused unless the kernels handle it."""
    if tensor.dtype not in allowed:
        names = ", ".join(t.name.lower() for t in _MATRIX_ORDER if t in allowed)
        raise UnsupportedModelError(
            path, f"tensor '{tensor.name}' has type {tensor.dtype.name}, which the runtime cannot use; "
            f"convert the file to one of {names}"
        )
    return tensor.dtype


def vector(ckpt: Checkpoint, name: str, n: int) -> np.ndarray:
    """A tensor of `n` values (any shape holding them), float32, finite."""
    if name not in ckpt.tensors:
        raise ModelFileError(ckpt.path, f"not a complete {ckpt.arch.name} model: '{name}' is missing")
    v = ckpt.tensors[name].numpy().reshape(-1).astype(np.float32)
    if v.size != n:
        raise ModelFileError(ckpt.path, f"tensor '{name}' has {v.size} values, expected {n}")
    if not np.isfinite(v).all():
        raise ModelFileError(ckpt.path, f"tensor '{name}' contains NaN or infinite values")
    return v
