"""RWKV-7's per-head kernels in IR: the WKV-7 state update (the generalised delta rule), the L2
normalisation of kk, and the per-head GroupNorm with the r·k·r_k bonus and the gate.

WKV-7, one head of size N, tokens t = 0..T-1, state S (N × N float32, S[i][j]: i the value index,
j the key index, rows contiguous — the official v7 orientation):

    sa[i]   = Σ_j S[i][j]·kk[j]
    S[i][j] = S[i][j]·w[j] − sa[i]·b[j] + v[i]·k[j]          (b = kk·a; the official a = −kk)
    y[i]    = Σ_j S[i][j]·r[j]                                 (with the new S)

Each row of S is one <N x float> vector (LLVM splits it into the host's registers: 4 zmm or 8 ymm
for N = 64); r, w, k, kk, b stay in registers for the token, so a row costs one load, two dot
products, two FMAs and one store, and the head's 16 KB of state stays in L1 across tokens.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I64, VOID, counted_loop, f32, get_or_define, i64, intrinsic, load_at, store_at
from runtime.jit.kernels.irhelpers import fma, fmul, hsum, load_vec, splat

L2_EPS = 1e-12  # torch.nn.functional.normalize's default
GROUP_NORM_EPS = 64e-5  # ln_x (RWKV-5.2/6/7)


def _vec_type(n: int) -> ir.VectorType:
    if n <= 0 or n % 8:
        raise ValueError(f"head size {n} is not supported (a positive multiple of 8)")
    return ir.VectorType(F32, n)


def emit_wkv7(module: ir.Module, n: int) -> ir.Function:
    """`void wkv7_n{n}(float* S, float* r, float* w, float* k, float* v, float* kk, float* b, float* y,
    i64 ld, i64 T)`: one head; token t's values start at t·ld in r, w, k, v, kk, b and y."""
    vty = _vec_type(n)

    def build(fn: ir.Function) -> None:
        S, r, w, k, v, kk, bb, y, ld, n_tok = fn.args
        for p in (S, r, w, k, v, kk, bb, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            off = b.mul(t, ld)
            rv, wv, kv, kkv, bv = (load_vec(b, p, off, ty=vty) for p in (r, w, k, kk, bb))
            vt = b.gep(v, [off], inbounds=True)
            yt = b.gep(y, [off], inbounds=True)
            with counted_loop(b, i64(0), i64(n), name="i") as i:
                row_at = b.mul(i, i64(n))
                row = load_vec(b, S, row_at, ty=vty)
                sa = hsum(b, fmul(b, row, kkv))
                vi = splat(b, load_at(b, vt, i), n)
                new = fma(b, row, wv, fma(b, splat(b, b.fneg(sa), n), bv, fmul(b, vi, kv)))
                b.store(new, b.bitcast(b.gep(S, [row_at], inbounds=True), vty.as_pointer()), align=4)
                store_at(b, hsum(b, fmul(b, new, rv)), yt, i)
        b.ret_void()

    fnty = ir.FunctionType(VOID, [F32P] * 8 + [I64, I64])
    return get_or_define(module, f"wkv7_n{n}", fnty, build)


def emit_l2_normalize(module: ir.Module, n: int) -> ir.Function:
    """`void l2norm_n{n}(float* x)`: x /= max(‖x‖₂, 1e-12) in place, as torch's F.normalize."""
    vty = _vec_type(n)

    def build(fn: ir.Function) -> None:
        (x,) = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        xv = load_vec(b, x, 0, ty=vty)
        sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
        maxnum = intrinsic(module, "llvm.maxnum.f32", F32, [F32, F32])
        norm = b.call(maxnum, [b.call(sqrt, [hsum(b, fmul(b, xv, xv))]), f32(L2_EPS)])
        out = b.fdiv(xv, splat(b, norm, n))
        b.store(out, b.bitcast(x, vty.as_pointer()), align=4)
        b.ret_void()

    return get_or_define(module, f"l2norm_n{n}", ir.FunctionType(VOID, [F32P]), build)


def emit_head_output(module: ir.Module, n: int) -> ir.Function:
    """`void head_out_n{n}(float* y, float* lnw, float* lnb, float* r, float* k, float* rk, float* v,
    float* g)`: y = (GroupNorm(y)·lnw + lnb + (Σ r·k·rk)·v)·g over one head, in place; GroupNorm in
    two passes (mean, then the centred sum of squares) with eps 64e-5."""
    vty = _vec_type(n)

    def build(fn: ir.Function) -> None:
        y = fn.args[0]
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        yv, wv, bv, rv, kv, rkv, vv, gv = (load_vec(b, p, 0, ty=vty) for p in fn.args)
        sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
        inv_n = f32(1.0 / n)
        mean = b.fmul(hsum(b, yv), inv_n)
        d = b.fsub(yv, splat(b, mean, n))
        var = b.fmul(hsum(b, b.fmul(d, d)), inv_n)
        inv = b.fdiv(f32(1.0), b.call(sqrt, [b.fadd(var, f32(GROUP_NORM_EPS))]))
        normed = b.fadd(b.fmul(b.fmul(d, splat(b, inv, n)), wv), bv)
        bonus = hsum(b, b.fmul(b.fmul(rv, kv), rkv))
        out = b.fmul(b.fadd(normed, b.fmul(splat(b, bonus, n), vv)), gv)
        b.store(out, b.bitcast(y, vty.as_pointer()), align=4)
        b.ret_void()

    return get_or_define(module, f"head_out_n{n}", ir.FunctionType(VOID, [F32P] * 8), build)
