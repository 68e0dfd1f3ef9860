"""Matrix × vector for K-quant rows (Q2_K … Q6_K): the generic kernel, activations in float32.

Called by matvec.py (same signature, same row split). On x86 hosts with AVX2 the integer kernel of
matvec_kquant_int.py is used instead (see `int_variant`); this one serves arm64 and older x86. Each
super-block's scales and biases are decoded at once (dequant_k.sub_scales, widened to one per 16
values); the codes of each sub-block of 16 are dotted with x in float and the sum scaled once, and the
biases meet Σx per sub-block (summed once per call), so Σ value·x = Σ_s scale_s·Σ q·x + Σ_s bias_s·Σx_s.
Rows are walked ROWS side by side, sharing the loads of x, with a software prefetch ahead of each
super-block. (Compiled for Sapphire Rapids it reads 5.3-7 GB/s per thread from L2, a third of the
integer kernel.)
"""

from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from runtime.jit.irkit import I32, counted_loop
from runtime.jit.kernels import matvec_kquant_int
from runtime.jit.kernels.dequant_k import SUB, SUPER, V16F, code_piece, per_sixteen, sub_scales, superblock_at
from runtime.jit.kernels.irhelpers import (
    V8F,
    VL,
    Var,
    byte_ptr,
    fadd,
    fma,
    fmul,
    hsum,
    i64c,
    load_vec,
    prefetch,
    row_at,
    shuffle,
    splat,
    stack_floats,
    store_results,
    tree_sum,
)
from runtime.jit.kernels.matvec_int16 import Variant, host_variant, rows_for
from runtime.jit.kernels.matvec_kquant_int import int_emitter
from runtime.quant.types import K_QUANT_TYPES, DType

ROWS = 2  # rows walked side by side
PREFETCH_BYTES = 4096  # software prefetch distance ahead of each super-block read


def sub_sums(b: ir.IRBuilder, x: ir.Value, n_cols: int) -> ir.Value:
    """float* to n_cols/16 stack floats: the sum of x over each sub-block of 16."""
    n_subs = n_cols // SUB
    sums = stack_floats(b, n_subs, align=64, name="xsum16")
    with counted_loop(b, 0, n_subs, name="xs16") as k:
        base = b.mul(k, i64c(SUB))
        parts = [load_vec(b, x, b.add(base, i64c(VL * j))) for j in range(SUB // VL)]
        b.store(hsum(b, tree_sum(b, parts)), b.gep(sums, [k], inbounds=True))
    return sums


class _RowDot:
    """One K-quant row against float x, super-block by super-block."""

    def __init__(self, b: ir.IRBuilder, dtype: DType, row: ir.Value) -> None:
        self.b, self.dtype, self.row = b, dtype, row
        self.accs = [Var(b, ir.Constant(V8F, None), "acc") for _ in range(2)]
        self.bias = Var(b, ir.Constant(V16F, None), "bacc")

    def add_superblock(self, k: ir.Value, x: ir.Value, xsum: ir.Value) -> None:
        b = self.b
        ptr = superblock_at(b, self.row, self.dtype, k)
        if PREFETCH_BYTES:
            prefetch(b, byte_ptr(b, ptr, PREFETCH_BYTES))
        scale, bias = per_sixteen(b, sub_scales(b, self.dtype, ptr))
        sums = load_vec(b, xsum, b.mul(k, i64c(SUPER // SUB)), ty=V16F)
        self.bias.set(fma(b, bias, sums, self.bias.get()))
        base = b.mul(k, i64c(SUPER))
        per_sub = SUB // VL
        for s in range(SUPER // SUB):
            dot = None
            for j in range(per_sub):
                p = s * per_sub + j
                q = b.sitofp(code_piece(b, self.dtype, ptr, p), V8F)
                xv = load_vec(b, x, b.add(base, i64c(VL * p)))
                dot = fmul(b, q, xv) if dot is None else fma(b, q, xv, dot)
            acc = self.accs[s % 2]
            acc.set(fma(b, dot, splat(b, b.extract_element(scale, ir.Constant(I32, s))), acc.get()))

    def result(self) -> ir.Value:
        b = self.b
        bias = self.bias.get()
        lo, hi = shuffle(b, bias, bias, list(range(VL))), shuffle(b, bias, bias, list(range(VL, 2 * VL)))
        return hsum(b, tree_sum(b, [a.get() for a in self.accs] + [fadd(b, lo, hi)]))


def kquant_emitter(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
                   y: ir.Value) -> Callable[..., None]:
    """Prepare x (emitted at the builder's position) and return `emit(first_row, count)`, which emits
    y[first + i] (+)= W[first + i]·x for i < count (the integer kernel's also takes a stride: see
    matvec_kquant_int.int_emitter)."""
    variant = int_variant(dtype)
    if variant is not None:
        return int_emitter(b, dtype, variant, n_cols, accumulate, w, x, y)
    xsum = sub_sums(b, x, n_cols)
    row_bytes = dtype.row_bytes(n_cols)

    def emit(first: ir.Value, count: int) -> None:
        rows = [_RowDot(b, dtype, row_at(b, w, first, i, row_bytes)) for i in range(count)]
        with counted_loop(b, 0, n_cols // SUPER, name="sblk") as k:
            for rd in rows:
                rd.add_superblock(k, x, xsum)
        store_results(b, y, first, [rd.result() for rd in rows], accumulate)

    return emit


def int_variant(dtype: DType) -> Variant | None:
    """The integer kernel's variant for `dtype` rows on this host (matvec_kquant_int.py), or None (the
    float kernel above: hosts without AVX2, not x86)."""
    return host_variant() if dtype in K_QUANT_TYPES else None


def kquant_rows(dtype: DType, n_cols: int) -> int:
    """Rows walked side by side: the integer kernel takes matvec_int16's rule with its own target
    (matvec_kquant_int.PREFETCH_TARGET: 2-4 rows, as many streams), the float kernel ROWS."""
    if int_variant(dtype) is None:
        return ROWS
    return rows_for(dtype, n_cols, matvec_kquant_int.PREFETCH_TARGET)
