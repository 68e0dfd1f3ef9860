"""Matrix × matrix for rows of any length (F32/F16): the LoRA factors whose rank is not a whole
number of 32-value blocks, which the block kernels (matvec.py, matmul.py) do not take.

    void smallmat_<type>_c<n>(i8* w, float* X, i64 ldx, float* Y, i64 ldy, i64 n_tok, i64 r0, i64 r1)

Y[t·ldy + r] = W[r] · X[t·ldx …] for t < n_tok and rows [r0, r1): plain loops whose inner dot
product LLVM vectorises (reassociation allowed). Released models' ranks are multiples of 32 and go
through the block kernels; this keeps any other rank exact rather than refused.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, I16, counted_loop, get_or_define, i64, load_at, store_at
from runtime.jit.kernels.irhelpers import Var, fadd, fmul, half_to_float
from runtime.jit.kernels.matmul import MATMUL_TYPE
from runtime.quant.types import DType

SMALLMAT_TYPES = (DType.F32, DType.F16)


def emit_smallmat(module: ir.Module, dtype: DType, n_cols: int) -> ir.Function:
    """Define (once per module) the kernel for rows of `n_cols` values of `dtype` (F32 or F16)."""
    if dtype not in SMALLMAT_TYPES or n_cols <= 0:
        raise ValueError(f"no small-matrix kernel for {dtype.name} rows of {n_cols}")
    half = dtype is DType.F16
    elem = I16 if half else F32

    def build(fn: ir.Function) -> None:
        w_raw, x, ldx, y, ldy, n_tok, r0, r1 = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        w = b.bitcast(w_raw, elem.as_pointer())
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            xt = b.gep(x, [b.mul(t, ldx)], inbounds=True)
            yt = b.gep(y, [b.mul(t, ldy)], inbounds=True)
            with counted_loop(b, r0, r1, name="r") as r:
                row = b.gep(w, [b.mul(r, i64(n_cols))], inbounds=True)
                acc = Var(b, ir.Constant(F32, 0.0))
                with counted_loop(b, i64(0), i64(n_cols), name="c") as c:
                    wv = b.load(b.gep(row, [c], inbounds=True), align=2 if half else 4)
                    wf = half_to_float(b, wv) if half else wv
                    acc.set(fadd(b, acc.get(), fmul(b, wf, load_at(b, xt, c))))
                store_at(b, acc.get(), yt, r)
        b.ret_void()

    return get_or_define(module, f"smallmat_{dtype.name.lower()}_c{n_cols}", MATMUL_TYPE, build)
