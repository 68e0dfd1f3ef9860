"""The skeleton every architecture's forward pass shares, in IR, and the helpers its layers use.

`void rwkv_forward(i8* args, i64 tid, i64 n_threads)` reads its argument block (layout.Arg), then
for each chunk of up to `spec.chunk` tokens: embeds the tokens (and applies ln0 unless the file
folded it into the embedding), calls one layer function per layer (the architecture's), and, with
an ALL_LOGITS buffer, the head over every token of the chunk. After the last chunk it computes the
head on the last token only (LN_out on thread 0 | barrier | logits, rows split).

An architecture subclasses `ForwardBuilder` and supplies `_layer_function(key, index)` (layers
with the same `_layer_key`, by default their matrix types, share one function); its spec
(`ArchSpec`) says the sizes the skeleton needs: per-layer floats of parameters and state, weight
slots per layer, and scratch regions named X (the residual stream, chunk × C), XA (chunk × C),
PRIVATE (a row per thread) and LNOUT (C).

The state: a call reads the state it was given (Arg.STATE_IN) and writes the new one (Arg.STATE), so
the given state stays usable (regenerate, fork) without a copy in Python. A layer function receives
both for its slice; it reads its shift vectors from the given state and copies each part of the
recurrent state into the new one, on the thread that updates that part, just before updating it
(`_take_state`), so the copy costs no extra pass over the state; for chunks after the first both
point at the new state. Each thread also adds up x − x over the recurrent blocks it wrote
(`_note_non_finite`: 0 unless a NaN or infinity is there) into its flag slot at the end of the
scratch (`SpecSizes.flags_offset`), so `Model` learns whether the new state is finite without
reading it again.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Any, ClassVar, NamedTuple, Protocol

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
    i64,
    load_at,
    split_range,
    store_at,
)
from runtime.jit.kernels.dequant import BLOCK, NIBBLE_LAYOUTS, block_at, dequantize_block
from runtime.jit.kernels.dequant_k import SUPER, dequantize_superblock, is_k_quant, superblock_at
from runtime.jit.kernels.finite import emit_non_finite_sum
from runtime.jit.kernels.irhelpers import VL, half_to_float, store_vec
from runtime.jit.kernels.mathfn import emit_sigmoid
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec, rows_per_step, walks_streams
from runtime.jit.kernels.norm import emit_layernorm
from runtime.jit.kernels.smallmat import emit_smallmat
from runtime.jit.threads import emit_barrier, emit_warm_barrier
from runtime.model.layout import MAX_THREADS, Arg, GlobalVec
from runtime.model.tensor_read import EMB_TYPES
from runtime.quant.types import DType

FORWARD_NAME = "rwkv_forward"
I8PP = I8P.as_pointer()
FLAG_STRIDE = 16  # floats per thread's non-finite flag: one 64-byte line each, no false sharing


# Cache lines per stream that a thread waiting at a barrier prefetches of the product it runs next (_sync's
# `after`; 0: none). At 2 threads each barrier cost each thread about 1.5-1.8 µs of waiting (0.4B RWKV-6 Q4_K,
# cycle counter around the wait, 200 steps: 218 barriers a token, the wait split 56/44 between the two
# threads at the same barrier, so the phases end at random, not one thread always late), and a thread that
# waits leaves its share of the memory bandwidth idle. Sapphire Rapids, 2 threads, interleaved
# (bench/decode_ab.py, ms/token at the lower quartile, off → 64 lines / 256 lines): 0.4B RWKV-6 Q4_K 10.43 →
# 10.20 / 10.25, Q3_K 9.44 → 9.28 / 9.26; 1.5B RWKV-7 Q2_K 25.72 → 25.35 / 25.21, Q4_K_M 33.67 → 33.56 /
# 33.79; files whose own pages were read at their limit (20-25 GB/s on that VM), 64 lines, within noise:
# 0.4B Q5_K 13.52 → 13.47, Q6_K 15.23 → 15.21, 1.5B Q5_K_M 43.77 → 43.98.
WARM_LINES = 64


class NextProduct(NamedTuple):
    """A product a thread runs after a barrier: rows [r0, r1) of the `dtype` matrix at i8* `w` (rows of
    `n_cols` values) against `n_tok` tokens."""

    dtype: DType
    n_cols: int
    w: ir.Value
    r0: ir.Value
    r1: ir.Value
    n_tok: ir.Value


def warm_plan(b: ir.IRBuilder, after: NextProduct) -> tuple[ir.Value, ir.Value, ir.Value, ir.Value]:
    """barrier_wait_warm's (base, stride, streams, lines) for `after`: for one token the runs the matvec
    kernel walks first (walks_streams: rows_per_step streams of (r1 − r0) // step rows from r0, else one run
    from r0), for more the prompt kernel's tiles (one run from r0); WARM_LINES lines per run, no more
    than the rows hold."""
    dtype, n_cols = after.dtype, after.n_cols
    row_bytes = dtype.row_bytes(n_cols)
    rows = b.sub(after.r1, after.r0)
    rows = b.select(b.icmp_signed("<", rows, i64(0)), i64(0), rows)
    step = rows_per_step(dtype, n_cols) if walks_streams(dtype, n_cols) else 1
    streams = b.select(b.icmp_signed("==", after.n_tok, i64(1)), i64(step), i64(1))
    stride = b.mul(b.sdiv(rows, streams), i64(row_bytes))
    lines = b.mul(streams, i64(WARM_LINES))
    have = b.sdiv(b.add(b.mul(rows, i64(row_bytes)), i64(63)), i64(64))
    lines = b.select(b.icmp_signed("<", have, lines), have, lines)
    base = b.gep(after.w, [b.mul(after.r0, i64(row_bytes))])  # only prefetched: it may lie past the matrix
    return base, stride, streams, lines


class ArchSpec(Protocol):
    """What the shared skeleton needs from an architecture's spec."""

    n_layer: int
    n_embd: int
    n_vocab: int
    emb_type: DType
    head_type: DType
    ln0_folded: bool
    chunk: int
    layer_types: tuple[tuple[DType, ...], ...]

    @property
    def layer_param_floats(self) -> int: ...
    @property
    def layer_state_floats(self) -> int: ...
    @property
    def layer_weight_slots(self) -> int: ...
    @property
    def emb_slot(self) -> int: ...
    @property
    def head_slot(self) -> int: ...
    def region_offset(self, region) -> int: ...
    @property
    def flags_offset(self) -> int: ...
    @property
    def unflagged_state_rows(self) -> int: ...


class SpecSizes:
    """The sizes of a spec that follow from its architecture's enums, shared by every architecture.

    A spec class sets `VEC` (its per-layer parameter rows), `MAT` (its per-layer weight slots) and
    `REGION` (its scratch regions, LNOUT last), and supplies `state_rows_per_layer` and
    `_region_offsets()` (offset of each region in floats)."""

    VEC: ClassVar[type[enum.IntEnum]]
    MAT: ClassVar[type[enum.IntEnum]]
    REGION: ClassVar[Any]
    n_layer: int
    n_embd: int

    @property
    def state_rows_per_layer(self) -> int:
        raise NotImplementedError

    @property
    def unflagged_state_rows(self) -> int:
        """The rows at the start of each layer's state that the forward pass's non-finite flag does not
        cover (Model checks them after the call); by default all of them."""
        return self.state_rows_per_layer

    def _region_offsets(self) -> dict[Any, int]:
        raise NotImplementedError

    @property
    def state_shape(self) -> tuple[int, int]:
        return (self.state_rows_per_layer * self.n_layer, self.n_embd)

    @property
    def layer_state_floats(self) -> int:
        return self.state_rows_per_layer * self.n_embd

    @property
    def layer_param_floats(self) -> int:
        return len(self.VEC) * self.n_embd

    @property
    def params_floats(self) -> int:
        return (len(self.VEC) * self.n_layer + len(GlobalVec)) * self.n_embd

    def region_offset(self, region: Any) -> int:
        """Offset of `region` in the scratch buffer, in floats."""
        return self._region_offsets()[region]

    @property
    def flags_offset(self) -> int:
        """Offset in floats of the threads' non-finite flags (FLAG_STRIDE each), after the regions."""
        end = self._region_offsets()[self.REGION.LNOUT] + self.n_embd
        return -(-end // FLAG_STRIDE) * FLAG_STRIDE

    @property
    def scratch_floats(self) -> int:
        return self.flags_offset + MAX_THREADS * FLAG_STRIDE

    @property
    def layer_weight_slots(self) -> int:
        return len(self.MAT)

    @property
    def weight_slots(self) -> int:
        return len(self.MAT) * self.n_layer + 2

    @property
    def emb_slot(self) -> int:
        return len(self.MAT) * self.n_layer

    @property
    def head_slot(self) -> int:
        return len(self.MAT) * self.n_layer + 1


class ForwardBuilder:
    """Builds `rwkv_forward` for `spec`; subclasses define `Region` and `_layer_function`."""

    Region: type  # the architecture's scratch regions (an IntEnum with X, XA, LNOUT, PRIVATE)
    module_prefix = "rwkv"

    def __init__(self, spec: ArchSpec) -> None:
        if spec.emb_type not in EMB_TYPES:
            names = ", ".join(sorted(t.name for t in EMB_TYPES))
            raise ValueError(f"embedding type {spec.emb_type.name} is not supported ({names})")
        self.spec = spec
        self.module = ir.Module(name=f"{self.module_prefix}_L{spec.n_layer}_C{spec.n_embd}_V{spec.n_vocab}")
        self.barrier = emit_barrier(self.module)
        self.ln_c = emit_layernorm(self.module, spec.n_embd)
        self._declare()
        self.layer_fns: dict[Hashable, ir.Function] = {}
        for layer, types in enumerate(spec.layer_types):
            key = self._layer_key(layer, types)
            if key not in self.layer_fns:
                self.layer_fns[key] = self._layer_function(key, len(self.layer_fns))
        self._forward_function()

    def _declare(self) -> None:
        """Declare the kernels the layers call (before any layer function is built)."""

    def _layer_key(self, layer: int, types: tuple[DType, ...]) -> Hashable:
        """What makes layers' compiled code differ: by default their matrix types (layers that agree
        share one function)."""
        return types

    def _layer_function(self, key: Hashable, index: int) -> ir.Function:
        raise NotImplementedError

    def _new_layer_function(self, index: int) -> tuple[ir.Function, ir.IRBuilder]:
        """`void rwkv_layer_k(float* scratch, float* state, float* params, i8** weights, i64 T, i64 tid,
        i64 n, i8* barrier, float* state_in)`, its entry block's builder: the layer's part of the new
        state and of the state it starts from (the same memory after a call's first chunk)."""
        fnty = ir.FunctionType(VOID, [F32P, F32P, F32P, I8PP, I64, I64, I64, I8P, F32P])
        fn = ir.Function(self.module, fnty, f"rwkv_layer_{index}")
        fn.linkage = "internal"
        return fn, ir.IRBuilder(fn.append_basic_block("entry"))

    # -- helpers -------------------------------------------------------------------------------

    def _region(self, b: ir.IRBuilder, scratch: ir.Value, region) -> ir.Value:
        return b.gep(scratch, [i64(self.spec.region_offset(region))], inbounds=True)

    def _row(self, b: ir.IRBuilder, base: ir.Value, t: ir.Value, width: int) -> ir.Value:
        return b.gep(base, [b.mul(t, i64(width))], inbounds=True)

    def _vec(self, b: ir.IRBuilder, params: ir.Value, index: int) -> ir.Value:
        return b.gep(params, [i64(index * self.spec.n_embd)], inbounds=True)

    def _sync(self, b: ir.IRBuilder, barrier: ir.Value, n: ir.Value, after: NextProduct | None = None) -> None:
        """Meet the other threads. With `after`, the product this thread runs after the barrier, a thread
        that waits prefetches the start of those rows meanwhile (warm_plan, sync.emit_warm_barrier)."""
        if after is None or not WARM_LINES or after.n_cols % BLOCK:
            b.call(self.barrier, [barrier, n])
            return
        b.call(emit_warm_barrier(self.module), [barrier, n, *warm_plan(b, after)])

    def _token_loop(self, b: ir.IRBuilder, n_tok: ir.Value, tid: ir.Value, n: ir.Value, name: str = "t"):
        return counted_loop(b, tid, n_tok, n, name=name)

    def _copy(self, b: ir.IRBuilder, src: ir.Value, dst: ir.Value, begin: ir.Value, end: ir.Value) -> None:
        with counted_loop(b, begin, end, name="cp") as c:
            store_at(b, load_at(b, src, c), dst, c)

    def _take_state(self, b: ir.IRBuilder, src: ir.Value, dst: ir.Value, begin: ir.Value, end: ir.Value) -> None:
        """dst[begin:end] = src[begin:end] unless both are the same memory: the part of the state this
        thread is about to update, taken from the state the call was given."""
        with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(src, I64), b.ptrtoint(dst, I64))):
            self._copy(b, src, dst, begin, end)

    def _flag(self, b: ir.IRBuilder, scratch: ir.Value, tid: ir.Value) -> ir.Value:
        """This thread's non-finite flag (float*)."""
        return b.gep(scratch, [b.add(i64(self.spec.flags_offset), b.mul(tid, i64(FLAG_STRIDE)))], inbounds=True)

    def _note_non_finite(self, b: ir.IRBuilder, scratch: ir.Value, tid: ir.Value, block: ir.Value,
                         count: int) -> None:
        """Add Σ (x − x) over block[0:count] to this thread's flag: it stays 0 while every value is finite."""
        flag = self._flag(b, scratch, tid)
        store_at(b, b.fadd(load_at(b, flag, i64(0)), b.call(emit_non_finite_sum(self.module), [block, i64(count)])),
                 flag, i64(0))

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

    def _matrix(self, b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, w: ir.Value, x: ir.Value,
                ldx: int, y: ir.Value, ldy: int, n_tok: ir.Value, r0: ir.Value, r1: ir.Value) -> None:
        """Y[t, r0:r1] (+)= W[r0:r1]·X[t]: the block kernels, or smallmat.py for odd row lengths (the
        LoRA factors of ranks that are not whole 32-value blocks)."""
        if n_cols % BLOCK == 0:
            self._product(b, dtype, n_cols, accumulate, w, x, ldx, y, ldy, n_tok, r0, r1)
        else:
            assert not accumulate
            b.call(emit_smallmat(self.module, dtype, n_cols), [w, x, i64(ldx), y, i64(ldy), n_tok, r0, r1])

    def _tanh(self, b: ir.IRBuilder, x: ir.Value) -> ir.Value:
        """tanh(x) = 2σ(2x) − 1 (vectorisable; absolute error ~1e-7)."""
        s = b.call(emit_sigmoid(self.module), [b.fmul(x, ir.Constant(F32, 2.0))])
        return b.fsub(b.fmul(s, ir.Constant(F32, 2.0)), ir.Constant(F32, 1.0))

    def _ln_pointers(self, b: ir.IRBuilder, scratch: ir.Value, prm: ir.Value, tid: ir.Value, ln_w: int,
                     ln_b: int) -> tuple[ir.Value, ...]:
        """What `_normed_rows` reads: X, XA, this thread's private row, the layer norm's weight and bias
        (computed once, before a token loop)."""
        R, C = self.Region, self.spec.n_embd
        x, xa = self._region(b, scratch, R.X), self._region(b, scratch, R.XA)
        private = self._row(b, self._region(b, scratch, R.PRIVATE), tid, C)
        return x, xa, private, self._vec(b, prm, ln_w), self._vec(b, prm, ln_b)

    def _normed_rows(self, b: ir.IRBuilder, pointers: tuple[ir.Value, ...], saved: ir.Value,
                     t: ir.Value) -> tuple[ir.Value, ir.Value]:
        """For token t: XA[t] = LN(X[t]); (XA[t], the previous token's LN output) — `saved` for t = 0,
        else LN(X[t-1]) recomputed into this thread's private row, so one barrier per mix suffices."""
        C = self.spec.n_embd
        x, xa, private, w, bias = pointers
        cur = self._row(b, xa, t, C)
        b.call(self.ln_c, [self._row(b, x, t, C), w, bias, cur])
        has_prev = b.icmp_signed(">", t, i64(0))
        with b.if_then(has_prev):
            b.call(self.ln_c, [self._row(b, x, b.sub(t, i64(1)), C), w, bias, private])
        return cur, b.select(has_prev, private, saved)

    # -- the whole pass ------------------------------------------------------------------------

    def _forward_function(self) -> None:
        spec, R = self.spec, self.Region
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
        weights, params = arg(Arg.WEIGHTS, I8PP), arg(Arg.PARAMS, F32P)
        all_logits, given = arg(Arg.ALL_LOGITS, F32P), arg(Arg.STATE_IN, F32P)
        glob = b.gep(params, [i64(spec.layer_param_floats * L)], inbounds=True)
        x = self._region(b, scratch, R.X)
        store_at(b, ir.Constant(F32, 0.0), self._flag(b, scratch, tid), i64(0))  # its own slot: no barrier

        with counted_loop(b, i64(0), n_total, i64(spec.chunk), name="chunk") as start:
            source = b.select(b.icmp_signed("==", start, i64(0)), given, state)  # later chunks: the new state
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
                b.call(self.layer_fns[self._layer_key(layer, types)], [
                    scratch,
                    b.gep(state, [i64(layer * spec.layer_state_floats)], inbounds=True),
                    b.gep(params, [i64(layer * spec.layer_param_floats)], inbounds=True),
                    b.gep(weights, [i64(layer * spec.layer_weight_slots)], inbounds=True),
                    n_tok, tid, n, barrier,
                    b.gep(source, [i64(layer * spec.layer_state_floats)], inbounds=True),
                ])
            with b.if_then(b.icmp_unsigned("!=", b.ptrtoint(all_logits, I64), i64(0))):
                self._chunk_head(b, x, self._region(b, scratch, R.XA), glob, weights,
                                 b.gep(all_logits, [b.mul(start, i64(spec.n_vocab))], inbounds=True),
                                 n_tok, tid, n, barrier)

        # head, for the last token of the call
        has_logits = b.icmp_unsigned("!=", b.ptrtoint(logits, I64), i64(0))
        has_tokens = b.icmp_signed(">", n_total, i64(0))
        with b.if_then(b.and_(has_logits, has_tokens)):
            last = b.urem(b.sub(n_total, i64(1)), i64(spec.chunk))
            lnout = self._region(b, scratch, R.LNOUT)
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
        C, dtype = self.spec.n_embd, self.spec.emb_type
        # llama.cpp's quantized files store the embedding in the file's type: decode the token's row
        if is_k_quant(dtype):
            unit, decode = SUPER, lambda row, k: dequantize_superblock(b, dtype, superblock_at(b, row, dtype, k))
        elif dtype in NIBBLE_LAYOUTS or dtype is DType.Q8_0:
            unit, decode = BLOCK, lambda row, k: dequantize_block(b, dtype, block_at(b, row, dtype, k))
        else:
            unit = 0
        if unit:
            row = b.gep(emb, [b.mul(token, i64(dtype.row_bytes(C)))], inbounds=True)
            with counted_loop(b, i64(0), i64(C // unit), name="e") as k:
                for j, piece in enumerate(decode(row, k)):
                    store_vec(b, piece, out, b.add(b.mul(k, i64(unit)), i64(VL * j)))
            return
        half = self.spec.emb_type is DType.F16
        elem = I16 if half else F32  # halves are read as bits: not every host converts them natively
        base = b.gep(b.bitcast(emb, elem.as_pointer()), [b.mul(token, i64(C))], inbounds=True)
        with counted_loop(b, i64(0), i64(C), name="e") as c:
            v = b.load(b.gep(base, [c], inbounds=True), align=2 if half else 4)
            store_at(b, half_to_float(b, v) if half else v, out, c)
