"""RWKV-7 ("Goose", x070): its tensors, parameter and state layout, and its layers' forward pass in IR.

The math is the official package's (rwkv 0.8.32, `RWKV_x070_TMix_one/_seq`, `CMix`; see
/work/shared/RWKV5-7.md §1.5). Per layer, with x the LN1 output and xx = x_prev − x:

    xr, xw, xk, xv, xa, xg = x + xx·x_r, …, x + xx·x_g
    r = Wr·xr;  k = Wk·xk;  v = Wv·xv
    w = exp(−0.606531·σ(w0 + W2·tanh(W1·xw)))           decay, float32
    a = σ(a0 + A2·(A1·xa));  g = G2·σ(G1·xg)
    kk = normalize_per_head(k·k_k);  k = k·(1 + (a − 1)·k_a)
    layer 0: v_first = v;  else v += (v_first − v)·σ(v0 + V2·(V1·xv))
    y = WKV-7(S; r, w, k, v, kk, kk·a)                  (kernels/wkv7.py)
    out = (GroupNorm_H(y)·ln_x + (Σ_head r·k·r_k)·v)·g;  x += Wo·out
    FFN: x += Wv·relu(Wk·(x2 + (x2_prev − x2)·ffn.x_k))²   (x2 the LN2 output)

The phases of one layer; work is divided inside each and threads meet at barriers between them:

    LN1 + six token-shift mixes              (tokens split)   | barrier
    r, k, v products; LoRA first factors     (rows split)     | barrier   (and att_xx saved)
      tanh(W1·xw), A1·xa, V1·xv, σ(G1·xg)
    per head: LoRA second factors for its channels, decay, a, k, v      (heads split)
      residual, kk normalised, WKV-7 over the tokens, GroupNorm + bonus,
      gate                                                    | barrier
    x += Wo · out                            (rows split)     | barrier
    LN2 + token-shift mix                    (tokens split)   | barrier
    relu(Wk·xk)²                             (rows split)     | barrier   (and ffn_xx saved)
    x += Wv · h                              (rows split)     | barrier

The LoRA factors are stored transposed (`V7_LORA_TRANSPOSED`: W1 as (Dw, C), W2 as (C, Dw), as
rwkv.cpp and llama.cpp store them), so every product is rows × the activation and goes through the
same matrix kernels as the big matrices (smallmat.py for ranks that are not whole 32-value blocks).
v_first lives in a scratch region (chunk × C) for the layers after the first within one call.

State per layer: att_xx (C), ffn_xx (C), then the H × N × N float32 WKV matrix (S[h][i][j], i the
value index: the official v7 orientation), i.e. 2 + N rows of C floats. Parameters: the `Vec` rows
per layer, then layout.GlobalVec.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from llvmlite import ir

from runtime.errors import ModelFileError
from runtime.formats.checkpoint import LN0_FOLDED, V7_LORA_TRANSPOSED, Checkpoint
from runtime.jit.irkit import counted_loop, f32, i64, load_at, split_range, store_at
from runtime.jit.kernels.dequant import BLOCK
from runtime.jit.kernels.mathfn import emit_exp, emit_sigmoid
from runtime.jit.kernels.matvec_q8short import emit_short_q8_group, uses_short_q8
from runtime.jit.kernels.smallmat import SMALLMAT_TYPES
from runtime.jit.kernels.wkv7 import emit_head_output, emit_l2_normalize, emit_wkv7
from runtime.model.arch.base import ForwardBuilder, NextProduct, SpecSizes
from runtime.model.layout import MAX_THREADS, aligned_offsets
from runtime.model.tensor_read import matrix_type, read_global_vectors, vector
from runtime.quant.types import DType

NAME = "rwkv7"
VERSION = "7"
DECAY_SCALE = -0.606531  # −exp(−0.5), as the official code writes it
# Decoding: the LoRA second factors in one call walking their rows side by side where all are short Q8_0
# rows (see _second_factors); a switch for A/B runs (bench/decode_ab.py).
GROUP_SECOND_FACTORS = True


class Vec(enum.IntEnum):
    """Per-layer float32 vectors of n_embd values, in this order in the parameter block."""

    LN1_W = 0
    LN1_B = 1
    LN2_W = 2
    LN2_B = 3
    X_R = 4
    X_W = 5
    X_K = 6
    X_V = 7
    X_A = 8
    X_G = 9
    W0 = 10
    A0 = 11
    V0 = 12  # zeros in layer 0 (unused there)
    K_K = 13
    K_A = 14
    R_K = 15  # (H, N) flattened
    LNX_W = 16
    LNX_B = 17
    FFN_X_K = 18


VEC_TENSORS = {
    Vec.LN1_W: "ln1.weight", Vec.LN1_B: "ln1.bias", Vec.LN2_W: "ln2.weight", Vec.LN2_B: "ln2.bias",
    Vec.X_R: "att.x_r", Vec.X_W: "att.x_w", Vec.X_K: "att.x_k", Vec.X_V: "att.x_v", Vec.X_A: "att.x_a",
    Vec.X_G: "att.x_g", Vec.W0: "att.w0", Vec.A0: "att.a0", Vec.V0: "att.v0", Vec.K_K: "att.k_k",
    Vec.K_A: "att.k_a", Vec.R_K: "att.r_k", Vec.LNX_W: "att.ln_x.weight", Vec.LNX_B: "att.ln_x.bias",
    Vec.FFN_X_K: "ffn.x_k",
}


class Mat(enum.IntEnum):
    """Per-layer weight matrices, in this order in the weight pointer table."""

    RECEPTANCE = 0
    KEY = 1
    VALUE = 2
    OUTPUT = 3
    W1 = 4
    W2 = 5
    A1 = 6
    A2 = 7
    V1 = 8  # unused (address 0) in layer 0
    V2 = 9
    G1 = 10
    G2 = 11
    FFN_KEY = 12
    FFN_VALUE = 13


MAT_TENSOR_NAMES = {
    Mat.RECEPTANCE: "att.receptance.weight", Mat.KEY: "att.key.weight", Mat.VALUE: "att.value.weight",
    Mat.OUTPUT: "att.output.weight", Mat.W1: "att.w1", Mat.W2: "att.w2", Mat.A1: "att.a1", Mat.A2: "att.a2",
    Mat.V1: "att.v1", Mat.V2: "att.v2", Mat.G1: "att.g1", Mat.G2: "att.g2", Mat.FFN_KEY: "ffn.key.weight",
    Mat.FFN_VALUE: "ffn.value.weight",
}
LAYER_MATRICES = tuple(MAT_TENSOR_NAMES.values())
_LORA = {Mat.W1: 0, Mat.W2: 0, Mat.A1: 1, Mat.A2: 1, Mat.V1: 2, Mat.V2: 2, Mat.G1: 3, Mat.G2: 3}  # → rank index
_FIRST_FACTORS = (Mat.W1, Mat.A1, Mat.V1, Mat.G1)


class StateRow(enum.IntEnum):
    """Rows of one layer's state; WKV's H·N·N floats follow as N rows of C."""

    ATT_XX = 0
    FFN_XX = 1
    WKV = 2


class Region(enum.IntEnum):
    """Regions of the scratch buffer: chunk × n_embd floats unless said otherwise."""

    X = 0
    XA = 1
    XR = 2
    XW = 3
    XK = 4
    XV = 5
    XAA = 6  # the mix for a
    XG = 7
    R = 8
    K = 9
    V = 10
    VFIRST = 11
    W = 12
    A = 13
    G = 14
    VG = 15
    KK = 16
    OUT = 17
    HW = 18  # chunk × Dw
    HA = 19  # chunk × Da
    HV = 20  # chunk × Dv
    HG = 21  # chunk × Dg
    HID = 22  # chunk × n_ffn
    PRIVATE = 23  # MAX_THREADS × n_embd, one row per thread
    LNOUT = 24  # n_embd


_MIXES = ((Vec.X_R, Region.XR), (Vec.X_W, Region.XW), (Vec.X_K, Region.XK), (Vec.X_V, Region.XV),
          (Vec.X_A, Region.XAA), (Vec.X_G, Region.XG))


@dataclass(frozen=True)
class ModelSpec(SpecSizes):
    """What the compiled code depends on: dimensions, LoRA ranks and each matrix's type."""

    VEC: ClassVar = Vec
    MAT: ClassVar = Mat
    REGION: ClassVar = Region

    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    head_size: int
    ranks: tuple[int, int, int, int]  # Dw, Da, Dv, Dg
    layer_types: tuple[tuple[DType, ...], ...]  # per layer, indexed by Mat
    emb_type: DType
    head_type: DType
    ln0_folded: bool
    chunk: int = 128
    # Parts left out of the compiled code, for bench/rwkv7_profile.py only (the results are wrong):
    # "matrices" (r, k, v, output, FFN products), "lora" (both LoRA factors), "heads" (per-head work).
    omit: frozenset[str] = frozenset()

    arch = NAME

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size

    @property
    def state_rows_per_layer(self) -> int:
        return 2 + self.head_size

    @property
    def unflagged_state_rows(self) -> int:
        return int(StateRow.WKV)  # the shift vectors; the WKV blocks are checked in the forward pass

    def _region_offsets(self) -> dict[Region, int]:
        return _region_offsets(self)

    def mat_cols(self, m: Mat) -> int:
        """Values per stored row of matrix `m` (LoRA factors transposed)."""
        if m in (Mat.W2, Mat.A2, Mat.V2, Mat.G2):
            return self.ranks[_LORA[m]]
        return self.n_ffn if m is Mat.FFN_VALUE else self.n_embd

    def mat_rows(self, m: Mat) -> int:
        if m in _FIRST_FACTORS:
            return self.ranks[_LORA[m]]
        return self.n_ffn if m is Mat.FFN_KEY else self.n_embd


def _region_offsets(spec: ModelSpec) -> dict[Region, int]:
    c, ch = spec.n_embd, spec.chunk
    sizes = {r: ch * c for r in Region}
    for region, rank in zip((Region.HW, Region.HA, Region.HV, Region.HG), spec.ranks, strict=True):
        sizes[region] = ch * rank
    sizes[Region.HID] = ch * spec.n_ffn
    sizes[Region.PRIVATE] = MAX_THREADS * c
    sizes[Region.LNOUT] = c
    return aligned_offsets(sizes.items())  # type: ignore[return-value]


# -- loading -------------------------------------------------------------------------------------


def _shape(ckpt: Checkpoint, name: str) -> tuple[int, ...]:
    t = ckpt.tensors.get(name)
    if t is None:
        raise ModelFileError(ckpt.path, f"not a complete RWKV-7 model: '{name}' is missing")
    return t.shape


def spec_for(path: Path, ckpt: Checkpoint, emb_type: DType, head_type: DType, chunk: int) -> ModelSpec:
    """The spec of `ckpt`, every tensor the forward pass reads checked for presence and shape."""
    arch = ckpt.arch
    if V7_LORA_TRANSPOSED not in ckpt.transforms:
        raise ModelFileError(
            path, "this RWKV-7 file stores its LoRA factors untransposed; convert it first: "
            f"rwkv-tui convert '{path}' model.gguf"
        )
    L, C, head_size = arch.n_layer, arch.n_embd, arch.head_size
    if arch.lora is None or head_size % 8 or head_size > 256:
        raise ModelFileError(path, f"head size {head_size} is not supported (a multiple of 8 up to 256)")
    # the ranks detect.py read from the shapes (Dw, Da, Dv, Dg); Dv is 0 with one layer (no V1 used)
    ranks = tuple(arch.lora)
    spec = ModelSpec(L, C, arch.n_vocab, arch.n_ffn, head_size, ranks, (), emb_type, head_type,  # type: ignore[arg-type]
                     LN0_FOLDED in ckpt.transforms, chunk)
    layer_types = []
    for i in range(L):
        types = []
        for m in Mat:
            name = f"blocks.{i}.{MAT_TENSOR_NAMES[m]}"
            if i == 0 and m in (Mat.V1, Mat.V2):
                types.append(DType.F32)  # unused
                continue
            want = (spec.mat_rows(m), spec.mat_cols(m))
            if _shape(ckpt, name) != want:
                raise ModelFileError(path, f"tensor '{name}' has shape {_shape(ckpt, name)}, expected {want}")
            allowed = None if want[1] % BLOCK == 0 else frozenset(SMALLMAT_TYPES)
            t = ckpt.tensors[name]
            types.append(matrix_type(path, t) if allowed is None else matrix_type(path, t, allowed))
        layer_types.append(tuple(types))
    for name in ("emb.weight", "head.weight"):
        if _shape(ckpt, name) != (arch.n_vocab, C):
            raise ModelFileError(path, f"tensor '{name}' has shape {_shape(ckpt, name)}, expected {(arch.n_vocab, C)}")
    return dataclasses.replace(spec, layer_types=tuple(layer_types))


def layer_weights(ckpt: Checkpoint, spec: ModelSpec, layer: int) -> list[str | None]:
    """The tensors whose addresses fill layer `layer`'s weight slots (None: unused)."""
    return [None if layer == 0 and m in (Mat.V1, Mat.V2) else f"blocks.{layer}.{MAT_TENSOR_NAMES[m]}" for m in Mat]


def params(ckpt: Checkpoint, spec: ModelSpec) -> np.ndarray:
    C = spec.n_embd
    out = np.zeros(spec.params_floats, dtype=np.float32)
    rows = out.reshape(-1, C)
    for i in range(spec.n_layer):
        for vec, suffix in VEC_TENSORS.items():
            if i == 0 and vec is Vec.V0:
                continue  # layer 0's v0/v1/v2 are unused (absent or dummies)
            rows[i * len(Vec) + vec] = vector(ckpt, f"blocks.{i}.{suffix}", C)
    read_global_vectors(ckpt, rows, len(Vec) * spec.n_layer, spec.ln0_folded)
    return out


def new_state_data(spec: ModelSpec) -> np.ndarray:
    return np.zeros(spec.state_shape, dtype=np.float32)


# -- the forward pass ----------------------------------------------------------------------------


def build_forward_module(spec: ModelSpec) -> ir.Module:
    """An IR module whose `rwkv_forward` runs `spec`'s model; see the module docstring."""
    return _Rwkv7Builder(spec).module


class _Rwkv7Builder(ForwardBuilder):
    Region = Region
    module_prefix = "rwkv7"
    spec: ModelSpec

    def _declare(self) -> None:
        N = self.spec.head_size
        self.exp = emit_exp(self.module)
        self.sigmoid = emit_sigmoid(self.module)
        self.wkv7 = emit_wkv7(self.module, N)
        self.l2norm = emit_l2_normalize(self.module, N)
        self.head_out = emit_head_output(self.module, N)

    def _layer_key(self, layer: int, types: tuple[DType, ...]) -> tuple[bool, tuple[DType, ...]]:
        return layer == 0, types

    def _layer_function(self, key: tuple[bool, tuple[DType, ...]], index: int) -> ir.Function:
        first, types = key
        spec = self.spec
        C, F, N = spec.n_embd, spec.n_ffn, spec.head_size
        fn, b = self._new_layer_function(index)
        scratch, st, prm, wts, n_tok, tid, n, barrier, st_in = fn.args

        def reg(r: Region) -> ir.Value:
            return self._region(b, scratch, r)

        def reg_row(r: Region, t: ir.Value, width: int = C) -> ir.Value:
            return self._row(b, reg(r), t, width)

        def weight(m: Mat) -> ir.Value:
            return b.load(b.gep(wts, [i64(int(m))], inbounds=True))

        def vec(v: Vec) -> ir.Value:
            return self._vec(b, prm, v)

        def matrix(m: Mat, src: Region, dst: Region, r0: ir.Value, r1: ir.Value, accumulate: bool = False) -> None:
            """dst[t, r0:r1] (+)= m[r0:r1]·src[t]; src rows are as wide as m's rows, dst rows as m is tall."""
            cols, rows = spec.mat_cols(m), spec.mat_rows(m)
            self._matrix(b, types[m], cols, accumulate, weight(m), reg(src), cols, reg(dst), rows, n_tok, r0, r1)

        att_xx = b.gep(st, [i64(StateRow.ATT_XX * C)], inbounds=True)
        ffn_xx = b.gep(st, [i64(StateRow.FFN_XX * C)], inbounds=True)
        wkv_state = b.gep(st, [i64(StateRow.WKV * C)], inbounds=True)
        att_xx_in = b.gep(st_in, [i64(StateRow.ATT_XX * C)], inbounds=True)
        ffn_xx_in = b.gep(st_in, [i64(StateRow.FFN_XX * C)], inbounds=True)
        wkv_in = b.gep(st_in, [i64(StateRow.WKV * C)], inbounds=True)
        last = b.sub(n_tok, i64(1))
        c0, c1 = split_range(b, C, tid, n)
        f0, f1 = split_range(b, F, tid, n)
        big, lora, heads = ("matrices" not in spec.omit, "lora" not in spec.omit, "heads" not in spec.omit)
        h0, h1 = split_range(b, spec.n_head, tid, n)
        hc0, hc1 = b.mul(h0, i64(N)), b.mul(h1, i64(N))

        def then(m: Mat, r0: ir.Value, r1: ir.Value) -> NextProduct | None:
            """What a barrier's waiting thread prefetches: this thread's rows of the product after it."""
            if not (lora if m in _LORA else big):
                return None
            return NextProduct(types[m], spec.mat_cols(m), weight(m), r0, r1, n_tok)

        # LN1 and the six token-shift mixes: x + (prev − x)·mix
        pointers = self._ln_pointers(b, scratch, prm, tid, Vec.LN1_W, Vec.LN1_B)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur, prev = self._normed_rows(b, pointers, att_xx_in, t)
            outs = [(vec(v), reg_row(r, t)) for v, r in _MIXES]
            with counted_loop(b, i64(0), i64(C), name="c") as c:
                x = load_at(b, cur, c)
                d = b.fsub(load_at(b, prev, c), x)
                for mix, out in outs:
                    store_at(b, b.fadd(x, b.fmul(d, load_at(b, mix, c))), out, c)
        self._sync(b, barrier, n, then(Mat.RECEPTANCE, c0, c1))

        # r, k, v and the LoRA first factors (rows split); att_xx saved
        for m, src, dst in ((Mat.RECEPTANCE, Region.XR, Region.R), (Mat.KEY, Region.XK, Region.K),
                            (Mat.VALUE, Region.XV, Region.V)):
            if big:
                matrix(m, src, dst, c0, c1)
        firsts = [(Mat.W1, Region.XW, Region.HW), (Mat.A1, Region.XAA, Region.HA), (Mat.G1, Region.XG, Region.HG)]
        if not first:
            firsts.append((Mat.V1, Region.XV, Region.HV))
        for m, src, dst in firsts if lora else ():
            rank = spec.mat_rows(m)
            d0, d1 = split_range(b, rank, tid, n)
            matrix(m, src, dst, d0, d1)
            if m in (Mat.W1, Mat.G1):
                with counted_loop(b, i64(0), n_tok, name="t") as t:
                    h = reg_row(dst, t, rank)
                    with counted_loop(b, d0, d1, name="d") as j:
                        z = load_at(b, h, j)
                        store_at(b, self._tanh(b, z) if m is Mat.W1 else b.call(self.sigmoid, [z]), h, j)
        self._copy(b, reg_row(Region.XA, last), att_xx, c0, c1)
        self._sync(b, barrier, n, then(Mat.W2, hc0, hc1))

        # per head (heads split): second factors, decay, a, k, v, kk, WKV-7, GroupNorm, bonus, gate
        seconds = [(Mat.W2, Region.HW, Region.W), (Mat.A2, Region.HA, Region.A), (Mat.G2, Region.HG, Region.G)]
        if not first:
            seconds.append((Mat.V2, Region.HV, Region.VG))
        if lora:
            self._second_factors(b, types, seconds, matrix, scratch, wts, n_tok, hc0, hc1)
        self._heads(b, first, scratch, tid, prm, wkv_state, wkv_in, n_tok, h0, h1, hc0, hc1, heads)
        self._sync(b, barrier, n, then(Mat.OUTPUT, c0, c1))
        if big:
            matrix(Mat.OUTPUT, Region.OUT, Region.X, c0, c1, accumulate=True)
        self._sync(b, barrier, n, then(Mat.FFN_KEY, f0, f1))

        # channel mixing
        pointers = self._ln_pointers(b, scratch, prm, tid, Vec.LN2_W, Vec.LN2_B)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur, prev = self._normed_rows(b, pointers, ffn_xx_in, t)
            mix, out = vec(Vec.FFN_X_K), reg_row(Region.XK, t)
            with counted_loop(b, i64(0), i64(C), name="c") as c:
                x = load_at(b, cur, c)
                store_at(b, b.fadd(x, b.fmul(b.fsub(load_at(b, prev, c), x), load_at(b, mix, c))), out, c)
        self._sync(b, barrier, n, then(Mat.FFN_KEY, f0, f1))
        if big:
            matrix(Mat.FFN_KEY, Region.XK, Region.HID, f0, f1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            hid = reg_row(Region.HID, t, F)
            with counted_loop(b, f0, f1, name="f") as j:
                z = load_at(b, hid, j)
                z = b.select(b.fcmp_ordered(">", z, f32(0.0)), z, f32(0.0))
                store_at(b, b.fmul(z, z), hid, j)
        self._copy(b, reg_row(Region.XA, last), ffn_xx, c0, c1)
        self._sync(b, barrier, n, then(Mat.FFN_VALUE, c0, c1))
        if big:
            matrix(Mat.FFN_VALUE, Region.HID, Region.X, c0, c1, accumulate=True)
        self._sync(b, barrier, n)
        b.ret_void()
        return fn

    def _second_factors(self, b: ir.IRBuilder, types: tuple[DType, ...], seconds: list[tuple[Mat, Region, Region]],
                        matrix: Callable[..., None], scratch: ir.Value, wts: ir.Value, n_tok: ir.Value, hc0: ir.Value,
                        hc1: ir.Value) -> None:
        """The LoRA second factors' rows [hc0, hc1): decoding one token with every factor in short Q8_0 rows,
        one call walking all of them side by side (matvec_q8short.emit_short_q8_group: one stream each at
        once, instead of one cold stream after another), else one product each. (The first factors, rows of
        C, walked the same way by a version of that kernel with X on the stack ran no faster: 0.4B Q5_1, 1
        thread, CPU time, 16 rounds interleaved: 27.46 against 27.39 ms.)"""
        cols = tuple(self.spec.mat_cols(m) for m, _, _ in seconds)
        if not (GROUP_SECOND_FACTORS and all(uses_short_q8(types[m], self.spec.mat_cols(m)) for m, _, _ in seconds)):
            for m, src, dst in seconds:
                matrix(m, src, dst, hc0, hc1)
            return
        args = []
        for m, src, dst in seconds:
            args += [b.load(b.gep(wts, [i64(int(m))], inbounds=True)), self._region(b, scratch, src),
                     self._region(b, scratch, dst)]
        with b.if_else(b.icmp_signed("==", n_tok, i64(1))) as (one, many):
            with one:
                b.call(emit_short_q8_group(self.module, cols), [*args, hc0, hc1])
            with many:
                for m, src, dst in seconds:
                    matrix(m, src, dst, hc0, hc1)

    def _heads(self, b: ir.IRBuilder, first: bool, scratch: ir.Value, tid: ir.Value, prm: ir.Value,
               wkv_state: ir.Value, wkv_in: ir.Value, n_tok: ir.Value, h0: ir.Value, h1: ir.Value, hc0: ir.Value,
               hc1: ir.Value, compute: bool) -> None:
        """Heads [h0, h1) (channels [hc0, hc1)) of every token, after the LoRA second factors: decay, a,
        k, the value residual, kk normalised, WKV-7, then GroupNorm + bonus + gate into OUT. The heads'
        state blocks are taken from `wkv_in` and checked for non-finite values; the math is left out
        when not `compute` (a bench-only variant)."""
        C, N = self.spec.n_embd, self.spec.head_size
        if not compute:
            with counted_loop(b, h0, h1, name="h") as h:
                block = b.mul(h, i64(N * N))
                self._take_state(b, b.gep(wkv_in, [block], inbounds=True), b.gep(wkv_state, [block], inbounds=True),
                                 i64(0), i64(N * N))
            return

        def reg(r: Region) -> ir.Value:
            return self._region(b, scratch, r)

        def vec(v: Vec) -> ir.Value:
            return self._vec(b, prm, v)

        with counted_loop(b, i64(0), n_tok, name="t") as t:
            row = b.mul(t, i64(C))
            with counted_loop(b, hc0, hc1, name="c") as c:
                tc = b.add(row, c)
                w = b.call(self.sigmoid, [b.fadd(load_at(b, vec(Vec.W0), c), load_at(b, reg(Region.W), tc))])
                store_at(b, b.call(self.exp, [b.fmul(w, f32(DECAY_SCALE))]), reg(Region.W), tc)
                a = b.call(self.sigmoid, [b.fadd(load_at(b, vec(Vec.A0), c), load_at(b, reg(Region.A), tc))])
                k = load_at(b, reg(Region.K), tc)
                store_at(b, b.fmul(k, load_at(b, vec(Vec.K_K), c)), reg(Region.KK), tc)
                store_at(b, a, reg(Region.A), tc)
                k_a = load_at(b, vec(Vec.K_A), c)
                store_at(b, b.fmul(k, b.fadd(f32(1.0), b.fmul(b.fsub(a, f32(1.0)), k_a))), reg(Region.K), tc)
                v = load_at(b, reg(Region.V), tc)
                if first:
                    store_at(b, v, reg(Region.VFIRST), tc)
                else:
                    gate = b.call(self.sigmoid, [b.fadd(load_at(b, vec(Vec.V0), c), load_at(b, reg(Region.VG), tc))])
                    v = b.fadd(v, b.fmul(b.fsub(load_at(b, reg(Region.VFIRST), tc), v), gate))
                    store_at(b, v, reg(Region.V), tc)
            with counted_loop(b, hc0, hc1, N, name="h") as hc:
                tc = b.add(row, hc)
                b.call(self.l2norm, [b.gep(reg(Region.KK), [tc], inbounds=True)])
            with counted_loop(b, hc0, hc1, name="c") as c:  # b = kk·a, into A
                tc = b.add(row, c)
                store_at(b, b.fmul(load_at(b, reg(Region.KK), tc), load_at(b, reg(Region.A), tc)), reg(Region.A), tc)

        def at(r: Region, c: ir.Value) -> ir.Value:
            return b.gep(reg(r), [c], inbounds=True)

        with counted_loop(b, h0, h1, name="h") as h:
            hc = b.mul(h, i64(N))
            block = b.gep(wkv_state, [b.mul(hc, i64(N))], inbounds=True)
            self._take_state(b, b.gep(wkv_in, [b.mul(hc, i64(N))], inbounds=True), block, i64(0), i64(N * N))
            b.call(self.wkv7, [
                block, at(Region.R, hc), at(Region.W, hc), at(Region.K, hc), at(Region.V, hc), at(Region.KK, hc),
                at(Region.A, hc), at(Region.OUT, hc), i64(C), n_tok,
            ])
            self._note_non_finite(b, scratch, tid, block, N * N)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            row = b.mul(t, i64(C))
            with counted_loop(b, hc0, hc1, N, name="h") as hc:
                tc = b.add(row, hc)
                b.call(self.head_out, [
                    at(Region.OUT, tc), b.gep(vec(Vec.LNX_W), [hc], inbounds=True),
                    b.gep(vec(Vec.LNX_B), [hc], inbounds=True), at(Region.R, tc), at(Region.K, tc),
                    b.gep(vec(Vec.R_K), [hc], inbounds=True), at(Region.V, tc), at(Region.G, tc),
                ])
