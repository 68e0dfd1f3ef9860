"""Layer normalisation of one row of `n` floats, in IR: (x - mean) / sqrt(var + 1e-5) * w + b.

Two passes in float32 (mean, then the centred sum of squares), as PyTorch's layer_norm does on
CPU, so results stay within float32 rounding of the reference.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.formats.detect import LN_EPS
from runtime.jit.irkit import F32, F32P, VOID, counted_loop, f32, fast, get_or_define, i64, intrinsic, load_at, store_at


def emit_layernorm(module: ir.Module, n: int) -> ir.Function:
    """`void layernorm_n{n}(float* x, float* w, float* b, float* out)`; `out` may alias `x`."""

    def build(fn: ir.Function) -> None:
        x, w, bias, out = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        acc = b.alloca(F32)
        b.store(f32(0.0), acc)
        with counted_loop(b, i64(0), i64(n)) as i:
            b.store(fast(b.fadd(b.load(acc), load_at(b, x, i))), acc)
        mean = b.fdiv(b.load(acc), f32(float(n)))
        b.store(f32(0.0), acc)
        with counted_loop(b, i64(0), i64(n)) as i:
            d = b.fsub(load_at(b, x, i), mean)
            b.store(fast(b.fadd(b.load(acc), b.fmul(d, d))), acc)
        sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
        var = b.fdiv(b.load(acc), f32(float(n)))
        inv = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(var, f32(LN_EPS))]))
        with counted_loop(b, i64(0), i64(n)) as i:
            y = b.fmul(b.fmul(b.fsub(load_at(b, x, i), mean), inv), load_at(b, w, i))
            store_at(b, b.fadd(y, load_at(b, bias, i)), out, i)
        b.ret_void()

    return get_or_define(module, f"layernorm_n{n}", ir.FunctionType(VOID, [F32P] * 4), build)
