"""A finite check over float32 memory the forward pass has just written: Σ (x − x).

x − x is 0 for every finite x and NaN for NaN or ±infinity, and a sum that meets a NaN stays NaN, so
the sum is 0 exactly when every value is finite. The forward pass runs it over each block of
recurrent state right after updating it (still in L1/L2), which is cheaper than a second pass over
the whole state from Python. Four independent vector accumulators keep the adds from waiting on
each other; no fast-math flag may touch the subtraction (nnan would fold it to 0).
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I64, counted_loop, f32, get_or_define, i64, load_at
from runtime.jit.kernels.irhelpers import V8F, Var, hsum, load_vec, splat_const

LANES = 8
CHAINS = 4  # independent accumulators: one vector add's latency hidden behind the others
STEP = LANES * CHAINS


def emit_non_finite_sum(module: ir.Module) -> ir.Function:
    """`float non_finite_sum(float* p, i64 count)`: Σ (p[i] − p[i]), 0 iff p[0:count] is all finite."""

    def build(fn: ir.Function) -> None:
        p, count = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        accs = [Var(b, splat_const(V8F, 0.0), f"acc{j}") for j in range(CHAINS)]
        whole = b.mul(b.udiv(count, i64(STEP)), i64(STEP))
        with counted_loop(b, i64(0), whole, i64(STEP), name="v") as i:
            for j, acc in enumerate(accs):
                x = load_vec(b, p, b.add(i, i64(LANES * j)))
                acc.set(b.fadd(acc.get(), b.fsub(x, x)))
        parts = [hsum(b, acc.get()) for acc in accs]
        total = Var(b, f32(0.0), "total")
        total.set(b.fadd(b.fadd(parts[0], parts[1]), b.fadd(parts[2], parts[3])))
        with counted_loop(b, whole, count, name="tail") as i:
            x = load_at(b, p, i)
            total.set(b.fadd(total.get(), b.fsub(x, x)))
        b.ret(total.get())

    return get_or_define(module, "non_finite_sum", ir.FunctionType(F32, [F32P, I64]), build)
