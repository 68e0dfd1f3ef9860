"""The RWKV-4 time-mixing recurrence (WKV) in its numerically stable form, in IR.

For channels [c0, c1) and tokens t = 0..T-1, with per-channel state (aa, bb, pp), decay w (already
-exp(time_decay)) and bonus u (time_first):

    ww = u + k;  p = max(pp, ww);  e1 = exp(pp - p);  e2 = exp(ww - p)
    out = sigmoid(r) * (e1·aa + e2·v) / (e1·bb + e2)
    ww = pp + w; p = max(ww, k);   e1 = exp(ww - p);  e2 = exp(k - p)
    aa = e1·aa + e2·v;  bb = e1·bb + e2;  pp = p

Tokens are the outer loop (the recurrence is sequential in t), channels the inner one, so the inner
loop vectorises. Each thread owns a channel range, so state updates need no synchronisation.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I64, VOID, counted_loop, get_or_define, i64, intrinsic, load_at, store_at
from runtime.jit.kernels.mathfn import emit_exp, emit_sigmoid


def emit_wkv(module: ir.Module) -> ir.Function:
    """`void wkv(float* k, float* v, float* r, float* out, i64 ld, i64 T, float* w, float* u,
    float* aa, float* bb, float* pp, i64 c0, i64 c1)`; token t of k/v/r/out starts at t·ld."""
    exp = emit_exp(module)
    sigmoid = emit_sigmoid(module)
    maxnum = intrinsic(module, "llvm.maxnum.f32", F32, [F32, F32])

    def build(fn: ir.Function) -> None:
        k, v, r, out, ld, n_tok, w, u, aa, bb, pp, c0, c1 = fn.args
        for p in (k, v, r, out, w, u, aa, bb, pp):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            row = b.mul(t, ld)
            with counted_loop(b, c0, c1, name="c") as c:
                tc = b.add(row, c)
                kk, vv, rr = load_at(b, k, tc), load_at(b, v, tc), load_at(b, r, tc)
                a0, b0, p0 = load_at(b, aa, c), load_at(b, bb, c), load_at(b, pp, c)
                ww = b.fadd(load_at(b, u, c), kk)
                p = b.call(maxnum, [p0, ww])
                e1 = b.call(exp, [b.fsub(p0, p)])
                e2 = b.call(exp, [b.fsub(ww, p)])
                num = b.fadd(b.fmul(e1, a0), b.fmul(e2, vv))
                den = b.fadd(b.fmul(e1, b0), e2)
                store_at(b, b.fmul(b.call(sigmoid, [rr]), b.fdiv(num, den)), out, tc)
                ww2 = b.fadd(p0, load_at(b, w, c))
                p2 = b.call(maxnum, [ww2, kk])
                e1 = b.call(exp, [b.fsub(ww2, p2)])
                e2 = b.call(exp, [b.fsub(kk, p2)])
                store_at(b, b.fadd(b.fmul(e1, a0), b.fmul(e2, vv)), aa, c)
                store_at(b, b.fadd(b.fmul(e1, b0), e2), bb, c)
                store_at(b, p2, pp, c)
        b.ret_void()

    fnty = ir.FunctionType(VOID, [F32P] * 4 + [I64, I64] + [F32P] * 5 + [I64, I64])
    return get_or_define(module, "wkv", fnty, build)
