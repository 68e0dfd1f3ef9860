"""Checks and reads every architecture's loader shares: a matrix's type, a vector's values, the
global vectors (ln_out, ln0) after the layers' parameter rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import ModelFileError, UnsupportedModelError
from runtime.formats.checkpoint import Checkpoint
from runtime.formats.tensors import LazyTensor
from runtime.model.layout import GlobalVec
from runtime.quant.types import K_QUANT_TYPES, DType

_MATRIX_ORDER = (DType.F32, DType.F16, DType.Q8_0, DType.Q6_K, DType.Q5_K, DType.Q5_1, DType.Q5_0, DType.Q4_K,
                 DType.Q4_1, DType.Q4_0, DType.Q3_K, DType.Q2_K)
MATRIX_TYPES = frozenset(_MATRIX_ORDER)
# llama.cpp's quantize writes token_embd in the file's type (Q8_0, Q5_1, … or a K-quant); a row is decoded per token
EMB_TYPES = frozenset({DType.F32, DType.F16, DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0,
                       *K_QUANT_TYPES})


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


def read_global_vectors(ckpt: Checkpoint, rows: np.ndarray, n_layer_rows: int, ln0_folded: bool) -> None:
    """ln_out, and ln0 unless the file folded it into the embedding, into the parameter rows that
    follow the layers' (`n_layer_rows` of them), in `GlobalVec` order."""
    C = rows.shape[1]
    rows[n_layer_rows + GlobalVec.LNOUT_W] = vector(ckpt, "ln_out.weight", C)
    rows[n_layer_rows + GlobalVec.LNOUT_B] = vector(ckpt, "ln_out.bias", C)
    if not ln0_folded:
        rows[n_layer_rows + GlobalVec.LN0_W] = vector(ckpt, "blocks.0.ln0.weight", C)
        rows[n_layer_rows + GlobalVec.LN0_B] = vector(ckpt, "blocks.0.ln0.bias", C)
