"""The RWKV-4 forward pass as one IR function, run by every thread of the pool with its index.

`void rwkv_forward(i8* args, i64 tid, i64 n_threads)` reads its argument block (layout.Arg), then
for each chunk of up to `spec.chunk` tokens: embeds the tokens, runs every layer, and for the last
chunk computes the head on the last token only. Work is divided inside each phase and threads meet
at barriers between phases:

    embed (tokens split)                         | barrier
    per layer:
      LN1 + token-shift mix   (tokens split)     | barrier
      K, V, R products        (rows split)       | barrier   (and att_xx saved, channels split)
      WKV recurrence          (channels split)   | barrier
      x += Wo · out           (rows split)       | barrier
      LN2 + token-shift mix   (tokens split)     | barrier
      relu(Wk·xk)², σ(Wr·xr)  (rows split)       | barrier   (and ffn_xx saved, channels split)
      x += σr ⊙ Wv·h          (rows split)       | barrier
    head: LN_out (thread 0)                      | barrier; logits (rows split)

With an ALL_LOGITS buffer, every chunk also ends with the head over all its tokens (LN_out tokens
split | barrier | head as matrix × matrix, rows split | barrier): the logits after every position,
for scoring a text in sequence mode (`Model.forward_all`).

A token's shift input is the previous token's normalised vector: the thread that owns token t
recomputes LN(x[t-1]) into its private row, so one barrier per mix suffices. One token uses the
matrix × vector kernels, several use matrix × matrix ones that read each weight block once per
chunk. Layers with the same matrix types share one compiled layer function.
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import (
    F32,
    F32P,
    I8P,
    I16,
    I32P,
    I64,
    I64P,
    VOID,
    counted_loop,
    f32,
    i64,
    load_at,
    split_range,
    store_at,
)
from runtime.jit.kernels.irhelpers import half_to_float
from runtime.jit.kernels.mathfn import emit_sigmoid
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec
from runtime.jit.kernels.norm import emit_layernorm
from runtime.jit.kernels.wkv import emit_wkv
from runtime.jit.threads import emit_barrier
from runtime.model.layout import (
    STATE_ROWS,
    Arg,
    GlobalVec,
    Mat,
    ModelSpec,
    Region,
    StateRow,
    Vec,
)
from runtime.quant.types import DType

FORWARD_NAME = "rwkv_forward"
_I8PP = I8P.as_pointer()


def build_forward_module(spec: ModelSpec) -> ir.Module:
    """An IR module whose `rwkv_forward` runs `spec`'s model; see the module docstring."""
    return _ForwardBuilder(spec).module


class _ForwardBuilder:
    def __init__(self, spec: ModelSpec) -> None:
        if spec.emb_type not in (DType.F32, DType.F16):
            raise ValueError(f"embedding type {spec.emb_type.name} is not supported (F32 or F16)")
        self.spec = spec
        self.module = ir.Module(name=f"rwkv4_L{spec.n_layer}_C{spec.n_embd}_V{spec.n_vocab}")
        self.barrier = emit_barrier(self.module)
        self.ln_c = emit_layernorm(self.module, spec.n_embd)
        self.wkv = emit_wkv(self.module)
        self.sigmoid = emit_sigmoid(self.module)
        self.layer_fns: dict[tuple[DType, ...], ir.Function] = {}
        for types in spec.layer_types:
            if types not in self.layer_fns:
                self.layer_fns[types] = self._layer_function(types, len(self.layer_fns))
        self._forward_function()

    # -- helpers -------------------------------------------------------------------------------

    def _region(self, b: ir.IRBuilder, scratch: ir.Value, region: Region) -> ir.Value:
        return b.gep(scratch, [i64(self.spec.region_offset(region))], inbounds=True)

    def _row(self, b: ir.IRBuilder, base: ir.Value, t: ir.Value, width: int) -> ir.Value:
        return b.gep(base, [b.mul(t, i64(width))], inbounds=True)

    def _vec(self, b: ir.IRBuilder, params: ir.Value, index: int) -> ir.Value:
        return b.gep(params, [i64(index * self.spec.n_embd)], inbounds=True)

    def _sync(self, b: ir.IRBuilder, barrier: ir.Value, n: ir.Value) -> None:
        b.call(self.barrier, [barrier, n])

    def _token_loop(self, b: ir.IRBuilder, n_tok: ir.Value, tid: ir.Value, n: ir.Value, name: str = "t"):
        return counted_loop(b, tid, n_tok, n, name=name)

    def _mix(self, b: ir.IRBuilder, cur: ir.Value, prev: ir.Value, mix: ir.Value, out: ir.Value) -> None:
        """out = cur·mix + prev·(1 - mix), as the reference computes it."""
        with counted_loop(b, i64(0), i64(self.spec.n_embd), name="c") as c:
            m = load_at(b, mix, c)
            a = b.fmul(load_at(b, cur, c), m)
            p = b.fmul(load_at(b, prev, c), b.fsub(f32(1.0), m))
            store_at(b, b.fadd(a, p), out, c)

    def _copy(self, b: ir.IRBuilder, src: ir.Value, dst: ir.Value, begin: ir.Value, end: ir.Value) -> None:
        with counted_loop(b, begin, end, name="cp") as c:
            store_at(b, load_at(b, src, c), dst, c)

    def _product(
        self, b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
        ldx: int, y: ir.Value, ldy: int, n_tok: ir.Value, r0: ir.Value, r1: ir.Value,
    ) -> None:
        """Y[t, r0:r1] (+)= W[r0:r1] · X[t] for every token: matrix × vector for one token."""
        matvec = emit_matvec(self.module, dtype, n_cols, accumulate=accumulate)
        matmul = emit_matmul(self.module, dtype, n_cols, accumulate=accumulate)
        with b.if_else(b.icmp_signed("==", n_tok, i64(1))) as (one, many):
            with one:
                b.call(matvec, [w, x, y, r0, r1])
            with many:
                b.call(matmul, [w, x, i64(ldx), y, i64(ldy), n_tok, r0, r1])

    def _token_shift_mix(
        self, b: ir.IRBuilder, scratch: ir.Value, prm: ir.Value, saved: ir.Value, n_tok: ir.Value,
        tid: ir.Value, n: ir.Value, ln_w: int, ln_b: int, mixes: list[tuple[int, Region]],
    ) -> None:
        """For each token owned by this thread: xa = LN(x); each `mixes` output = mix(xa, previous)."""
        C = self.spec.n_embd
        x, xa = self._region(b, scratch, Region.X), self._region(b, scratch, Region.XA)
        private = self._row(b, self._region(b, scratch, Region.PRIVATE), tid, C)
        w, bias = self._vec(b, prm, ln_w), self._vec(b, prm, ln_b)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur = self._row(b, xa, t, C)
            b.call(self.ln_c, [self._row(b, x, t, C), w, bias, cur])
            has_prev = b.icmp_signed(">", t, i64(0))
            with b.if_then(has_prev):
                b.call(self.ln_c, [self._row(b, x, b.sub(t, i64(1)), C), w, bias, private])
            prev = b.select(has_prev, private, saved)
            for mix_index, region in mixes:
                out = self._row(b, self._region(b, scratch, region), t, C)
                self._mix(b, cur, prev, self._vec(b, prm, mix_index), out)

    # -- one layer -----------------------------------------------------------------------------

    def _layer_function(self, types: tuple[DType, ...], index: int) -> ir.Function:
        """`void layer_k(float* scratch, float* state, float* params, i8** weights, i64 T, i64 tid,
        i64 n, i8* barrier)` for layers whose matrices have `types`."""
        spec = self.spec
        C, F = spec.n_embd, spec.n_ffn
        fnty = ir.FunctionType(VOID, [F32P, F32P, F32P, _I8PP, I64, I64, I64, I8P])
        fn = ir.Function(self.module, fnty, f"rwkv_layer_{index}")
        fn.linkage = "internal"
        scratch, st, prm, wts, n_tok, tid, n, barrier = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))

        def reg(r: Region) -> ir.Value:
            return self._region(b, scratch, r)

        def state_row(row: StateRow) -> ir.Value:
            return b.gep(st, [i64(int(row) * C)], inbounds=True)

        def weight(m: Mat) -> ir.Value:
            return b.load(b.gep(wts, [i64(int(m))], inbounds=True))

        last = b.sub(n_tok, i64(1))
        c0, c1 = split_range(b, C, tid, n)
        f0, f1 = split_range(b, F, tid, n)

        # time mixing
        self._token_shift_mix(
            b, scratch, prm, state_row(StateRow.ATT_XX), n_tok, tid, n, Vec.LN1_W, Vec.LN1_B,
            [(Vec.ATT_MIX_K, Region.XK), (Vec.ATT_MIX_V, Region.XV), (Vec.ATT_MIX_R, Region.XR)],
        )
        self._sync(b, barrier, n)
        for m, src, dst in ((Mat.ATT_KEY, Region.XK, Region.K), (Mat.ATT_VALUE, Region.XV, Region.V),
                            (Mat.ATT_RECEPTANCE, Region.XR, Region.R)):
            self._product(b, types[m], C, False, weight(m), reg(src), C, reg(dst), C, n_tok, c0, c1)
        self._copy(b, self._row(b, reg(Region.XA), last, C), state_row(StateRow.ATT_XX), c0, c1)
        self._sync(b, barrier, n)
        b.call(self.wkv, [
            reg(Region.K), reg(Region.V), reg(Region.R), reg(Region.OUT), i64(C), n_tok,
            self._vec(b, prm, Vec.ATT_DECAY), self._vec(b, prm, Vec.ATT_FIRST),
            state_row(StateRow.AA), state_row(StateRow.BB), state_row(StateRow.PP), c0, c1,
        ])
        self._sync(b, barrier, n)
        self._product(b, types[Mat.ATT_OUTPUT], C, True, weight(Mat.ATT_OUTPUT), reg(Region.OUT), C,
                      reg(Region.X), C, n_tok, c0, c1)
        self._sync(b, barrier, n)

        # channel mixing
        self._token_shift_mix(
            b, scratch, prm, state_row(StateRow.FFN_XX), n_tok, tid, n, Vec.LN2_W, Vec.LN2_B,
            [(Vec.FFN_MIX_K, Region.XK), (Vec.FFN_MIX_R, Region.XR)],
        )
        self._sync(b, barrier, n)
        hid, r2 = reg(Region.HID), reg(Region.R2)
        self._product(b, types[Mat.FFN_KEY], C, False, weight(Mat.FFN_KEY), reg(Region.XK), C, hid, F,
                      n_tok, f0, f1)
        self._product(b, types[Mat.FFN_RECEPTANCE], C, False, weight(Mat.FFN_RECEPTANCE), reg(Region.XR), C,
                      r2, C, n_tok, c0, c1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            h = self._row(b, hid, t, F)
            with counted_loop(b, f0, f1, name="f") as j:
                v = load_at(b, h, j)
                v = b.select(b.fcmp_ordered(">", v, f32(0.0)), v, f32(0.0))
                store_at(b, b.fmul(v, v), h, j)
            rr = self._row(b, r2, t, C)
            with counted_loop(b, c0, c1, name="c") as c:
                store_at(b, b.call(self.sigmoid, [load_at(b, rr, c)]), rr, c)
        self._copy(b, self._row(b, reg(Region.XA), last, C), state_row(StateRow.FFN_XX), c0, c1)
        self._sync(b, barrier, n)
        tmp, x = reg(Region.TMP), reg(Region.X)
        self._product(b, types[Mat.FFN_VALUE], F, False, weight(Mat.FFN_VALUE), hid, F, tmp, C, n_tok, c0, c1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            xt, rt, vt = self._row(b, x, t, C), self._row(b, r2, t, C), self._row(b, tmp, t, C)
            with counted_loop(b, c0, c1, name="c") as c:
                store_at(b, b.fadd(load_at(b, xt, c), b.fmul(load_at(b, rt, c), load_at(b, vt, c))), xt, c)
        self._sync(b, barrier, n)
        b.ret_void()
        return fn

    # -- the whole pass ------------------------------------------------------------------------

    def _forward_function(self) -> None:
        spec = self.spec
        C, L = spec.n_embd, spec.n_layer
        fn = ir.Function(self.module, ir.FunctionType(VOID, [I8P, I64, I64]), FORWARD_NAME)
        args_raw, tid, n = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        args = b.bitcast(args_raw, I64P)

        def arg(slot: Arg, ty: ir.Type) -> ir.Value:
            v = load_at(b, args, i64(int(slot)))
            return v if ty is I64 else b.inttoptr(v, ty)

        tokens, n_total = arg(Arg.TOKENS, I32P), arg(Arg.N_TOKENS, I64)
        state, logits = arg(Arg.STATE, F32P), arg(Arg.LOGITS, F32P)
        scratch, barrier = arg(Arg.SCRATCH, F32P), arg(Arg.BARRIER, I8P)
        weights, params = arg(Arg.WEIGHTS, _I8PP), arg(Arg.PARAMS, F32P)
        all_logits = arg(Arg.ALL_LOGITS, F32P)
        glob = b.gep(params, [i64(len(Vec) * L * C)], inbounds=True)
        x = self._region(b, scratch, Region.X)

        with counted_loop(b, i64(0), n_total, i64(spec.chunk), name="chunk") as start:
            remaining = b.sub(n_total, start)
            n_tok = b.select(b.icmp_signed("<", remaining, i64(spec.chunk)), remaining, i64(spec.chunk))
            # embed
            emb = b.load(b.gep(weights, [i64(spec.emb_slot)], inbounds=True))
            with self._token_loop(b, n_tok, tid, n) as t:
                token = b.zext(load_at(b, tokens, b.add(start, t)), I64)
                row = self._row(b, x, t, C)
                self._embed_row(b, emb, token, row)
                if not spec.ln0_folded:
                    b.call(self.ln_c, [row, self._vec(b, glob, GlobalVec.LN0_W),
                                       self._vec(b, glob, GlobalVec.LN0_B), row])
            self._sync(b, barrier, n)
            for layer, types in enumerate(spec.layer_types):
                b.call(self.layer_fns[types], [
                    scratch,
                    b.gep(state, [i64(layer * STATE_ROWS * C)], inbounds=True),
                    b.gep(params, [i64(layer * len(Vec) * C)], inbounds=True),
                    b.gep(weights, [i64(layer * len(Mat))], inbounds=True),
                    n_tok, tid, n, barrier,
                ])
            with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(all_logits, I64), i64(0))):
                self._chunk_head(b, x, self._region(b, scratch, Region.XA), glob, weights,
                                 b.gep(all_logits, [b.mul(start, i64(spec.n_vocab))], inbounds=True),
                                 n_tok, tid, n, barrier)

        # head, for the last token of the call
        has_logits = b.icmp_unsigned("!=", b.ptrtoint(logits, I64), i64(0))
        has_tokens = b.icmp_signed(">", n_total, i64(0))
        with b.if_then(b.and_(has_logits, has_tokens)):
            last = b.urem(b.sub(n_total, i64(1)), i64(spec.chunk))
            lnout = self._region(b, scratch, Region.LNOUT)
            with b.if_then(b.icmp_signed("==", tid, i64(0))):
                b.call(self.ln_c, [self._row(b, x, last, C), self._vec(b, glob, GlobalVec.LNOUT_W),
                                   self._vec(b, glob, GlobalVec.LNOUT_B), lnout])
            self._sync(b, barrier, n)
            head = b.load(b.gep(weights, [i64(spec.head_slot)], inbounds=True))
            v0, v1 = split_range(b, spec.n_vocab, tid, n)
            b.call(emit_matvec(self.module, spec.head_type, C), [head, lnout, logits, v0, v1])
        b.ret_void()

    def _chunk_head(self, b: ir.IRBuilder, x: ir.Value, normed: ir.Value, glob: ir.Value, weights: ir.Value,
                    out: ir.Value, n_tok: ir.Value, tid: ir.Value, n: ir.Value, barrier: ir.Value) -> None:
        """out[t] = head · LN_out(x[t]) for every token of the chunk (out: n_tok × V floats)."""
        spec = self.spec
        C = spec.n_embd
        with self._token_loop(b, n_tok, tid, n) as t:
            b.call(self.ln_c, [self._row(b, x, t, C), self._vec(b, glob, GlobalVec.LNOUT_W),
                               self._vec(b, glob, GlobalVec.LNOUT_B), self._row(b, normed, t, C)])
        self._sync(b, barrier, n)
        head = b.load(b.gep(weights, [i64(spec.head_slot)], inbounds=True))
        v0, v1 = split_range(b, spec.n_vocab, tid, n)
        self._product(b, spec.head_type, C, False, head, normed, C, out, spec.n_vocab, n_tok, v0, v1)
        self._sync(b, barrier, n)

    def _embed_row(self, b: ir.IRBuilder, emb: ir.Value, token: ir.Value, out: ir.Value) -> None:
        C = self.spec.n_embd
        half = self.spec.emb_type is DType.F16
        elem = I16 if half else F32  # halves are read as bits: not every host converts them natively
        base = b.gep(b.bitcast(emb, elem.as_pointer()), [b.mul(token, i64(C))], inbounds=True)
        with counted_loop(b, i64(0), i64(C), name="e") as c:
            v = b.load(b.gep(base, [c], inbounds=True), align=2 if half else 4)
            store_at(b, half_to_float(b, v) if half else v, out, c)

