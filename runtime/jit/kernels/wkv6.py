"""RWKV-5.2 and RWKV-6's per-head kernels in IR: the WKV state update and the GroupNorm with the gate.

WKV-5/6, one head of size N, tokens t = 0..T-1, state S (N × N float32, S[i][j]: i the key index,
j the value index, rows contiguous — the official v5/v6 orientation, decay on rows):

    y[j]    = Σ_i r[i]·(u[i]·k[i]·v[j] + S[i][j])            (with the old S)
    S[i][j] = k[i]·v[j] + w[i]·S[i][j]

u is the bonus (time_faaaa), w the decay in (0, 1): one per channel for RWKV-5.2 (`ldw` 0), one per
channel and token for RWKV-6 (`ldw` = the row stride). Each row of S is one <N x float> vector; y
is accumulated in registers over the rows, so a row costs one load, three FMAs and one store.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I64, VOID, counted_loop, f32, get_or_define, i64, intrinsic, load_at
from runtime.jit.kernels.irhelpers import Var, fma, hsum, load_vec, splat
from runtime.jit.kernels.wkv7 import GROUP_NORM_EPS, _vec_type


def emit_wkv6(module: ir.Module, n: int) -> ir.Function:
    """`void wkv6_n{n}(float* S, float* r, float* w, float* k, float* v, float* u, float* y, i64 ld,
    i64 ldw, i64 T)`: one head; token t's values start at t·ld in r, k, v and y, at t·ldw in w."""
    vty = _vec_type(n)

    def build(fn: ir.Function) -> None:
        S, r, w, k, v, u, y, ld, ldw, n_tok = fn.args
        for p in (S, r, w, k, v, u, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            off = b.mul(t, ld)
            rt, kt = b.gep(r, [off], inbounds=True), b.gep(k, [off], inbounds=True)
            wt = b.gep(w, [b.mul(t, ldw)], inbounds=True)
            vv = load_vec(b, v, off, ty=vty)
            acc = Var(b, ir.Constant(vty, None))
            with counted_loop(b, i64(0), i64(n), name="i") as i:
                row_at = b.mul(i, i64(n))
                row = load_vec(b, S, row_at, ty=vty)
                ki = load_at(b, kt, i)
                kv = b.fmul(splat(b, ki, n), vv)  # a = k[i]·v
                ri = splat(b, load_at(b, rt, i), n)
                ui = splat(b, load_at(b, u, i), n)
                acc.set(fma(b, ri, fma(b, ui, kv, row), acc.get()))
                new = fma(b, splat(b, load_at(b, wt, i), n), row, kv)
                b.store(new, b.bitcast(b.gep(S, [row_at], inbounds=True), vty.as_pointer()), align=4)
            b.store(acc.get(), b.bitcast(b.gep(y, [off], inbounds=True), vty.as_pointer()), align=4)
        b.ret_void()

    fnty = ir.FunctionType(VOID, [F32P] * 7 + [I64, I64, I64])
    return get_or_define(module, f"wkv6_n{n}", fnty, build)


def emit_group_norm_gate(module: ir.Module, n: int) -> ir.Function:
    """`void gn_gate_n{n}(float* y, float* lnw, float* lnb, float* g)`: y = (GroupNorm(y)·lnw + lnb)·g
    over one head, in place; GroupNorm in two passes (mean, then the centred sum of squares), eps 64e-5."""
    vty = _vec_type(n)

    def build(fn: ir.Function) -> None:
        y = fn.args[0]
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        yv, wv, bv, gv = (load_vec(b, p, 0, ty=vty) for p in fn.args)
        sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
        inv_n = f32(1.0 / n)
        mean = b.fmul(hsum(b, yv), inv_n)
        d = b.fsub(yv, splat(b, mean, n))
        var = b.fmul(hsum(b, b.fmul(d, d)), inv_n)
        inv = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(var, f32(GROUP_NORM_EPS))]))
        out = b.fmul(b.fadd(b.fmul(b.fmul(d, splat(b, inv, n)), wv), bv), gv)
        b.store(out, b.bitcast(y, vty.as_pointer()), align=4)
        b.ret_void()

    return get_or_define(module, f"gn_gate_n{n}", ir.FunctionType(VOID, [F32P] * 4), build)
