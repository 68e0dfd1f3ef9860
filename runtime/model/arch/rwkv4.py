"""RWKV-4: its tensors, parameter and state layout, and its layers' forward pass in IR.

The shared skeleton (arch/base.py) embeds, calls one layer function per layer and computes the head.
A layer is these phases; work is divided inside each and threads meet at barriers between them:

    LN1 + token-shift mix   (tokens split)     | barrier
    K, V, R products        (rows split)       | barrier   (and att_xx saved, channels split)
    WKV recurrence          (channels split)   | barrier
    x += Wo · out           (rows split)       | barrier
    LN2 + token-shift mix   (tokens split)     | barrier
    relu(Wk·xk)², σ(Wr·xr)  (rows split)       | barrier   (and ffn_xx saved, channels split)
    x += σr ⊙ Wv·h          (rows split)       | barrier

One token uses the matrix × vector kernels, several use matrix × matrix ones that read each weight
block once per chunk. Layers with the same matrix types share one compiled layer function.

State: 5 rows of n_embd float32 per layer in the official order (att_xx, aa, bb, pp, ffn_xx), pp
starting at -1e30. Parameters: the `Vec` rows per layer (time_decay as -exp(time_decay), time_mix
squeezed), then layout.GlobalVec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from llvmlite import ir

from runtime.formats.checkpoint import LN0_FOLDED, TIME_DECAY_NEG_EXP, Checkpoint
from runtime.jit.irkit import counted_loop, f32, i64, load_at, split_range, store_at
from runtime.jit.kernels.mathfn import emit_sigmoid
from runtime.jit.kernels.wkv import emit_wkv
from runtime.model.arch.base import ForwardBuilder, NextProduct, SpecSizes
from runtime.model.layout import MAX_THREADS, aligned_offsets
from runtime.model.tensor_read import matrix_type, read_global_vectors, vector
from runtime.quant.types import DType

NAME = "rwkv4"
VERSION = "4"


class Vec(enum.IntEnum):
    """Per-layer float32 vectors of n_embd values, in this order in the parameter block."""

    LN1_W = 0
    LN1_B = 1
    LN2_W = 2
    LN2_B = 3
    ATT_MIX_K = 4
    ATT_MIX_V = 5
    ATT_MIX_R = 6
    ATT_DECAY = 7  # -exp(time_decay)
    ATT_FIRST = 8
    FFN_MIX_K = 9
    FFN_MIX_R = 10


VEC_TENSORS = {
    Vec.LN1_W: "ln1.weight",
    Vec.LN1_B: "ln1.bias",
    Vec.LN2_W: "ln2.weight",
    Vec.LN2_B: "ln2.bias",
    Vec.ATT_MIX_K: "att.time_mix_k",
    Vec.ATT_MIX_V: "att.time_mix_v",
    Vec.ATT_MIX_R: "att.time_mix_r",
    Vec.ATT_DECAY: "att.time_decay",
    Vec.ATT_FIRST: "att.time_first",
    Vec.FFN_MIX_K: "ffn.time_mix_k",
    Vec.FFN_MIX_R: "ffn.time_mix_r",
}


class Mat(enum.IntEnum):
    """Per-layer weight matrices, in this order in the weight pointer table."""

    ATT_KEY = 0
    ATT_VALUE = 1
    ATT_RECEPTANCE = 2
    ATT_OUTPUT = 3
    FFN_KEY = 4
    FFN_RECEPTANCE = 5
    FFN_VALUE = 6


MAT_TENSOR_NAMES = {
    Mat.ATT_KEY: "att.key.weight",
    Mat.ATT_VALUE: "att.value.weight",
    Mat.ATT_RECEPTANCE: "att.receptance.weight",
    Mat.ATT_OUTPUT: "att.output.weight",
    Mat.FFN_KEY: "ffn.key.weight",
    Mat.FFN_RECEPTANCE: "ffn.receptance.weight",
    Mat.FFN_VALUE: "ffn.value.weight",
}
LAYER_MATRICES = tuple(MAT_TENSOR_NAMES.values())


class StateRow(enum.IntEnum):
    """Rows of one layer's state (the official implementation's order: 5 rows per layer)."""

    ATT_XX = 0
    AA = 1
    BB = 2
    PP = 3
    FFN_XX = 4


STATE_ROWS = len(StateRow)
PP_INITIAL = -1e30


class Region(enum.IntEnum):
    """Regions of the scratch buffer; all but HID and the per-thread ones hold chunk × n_embd floats."""

    X = 0
    XA = 1
    XK = 2
    XV = 3
    XR = 4
    K = 5
    V = 6
    R = 7
    OUT = 8
    R2 = 9
    TMP = 10
    HID = 11  # chunk × n_ffn
    PRIVATE = 12  # MAX_THREADS × n_embd, one row per thread
    LNOUT = 13  # n_embd


@dataclass(frozen=True)
class ModelSpec(SpecSizes):
    """What the compiled code depends on: dimensions and each matrix's type."""

    VEC: ClassVar = Vec
    MAT: ClassVar = Mat
    REGION: ClassVar = Region

    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    layer_types: tuple[tuple[DType, ...], ...]  # per layer, indexed by Mat
    emb_type: DType
    head_type: DType
    ln0_folded: bool
    chunk: int = 128

    arch = NAME

    @property
    def state_rows_per_layer(self) -> int:
        return STATE_ROWS

    def _region_offsets(self) -> dict[Region, int]:
        return _region_offsets(self)


def _region_offsets(spec: ModelSpec) -> dict[Region, int]:
    c, ch = spec.n_embd, spec.chunk
    sizes = {r: ch * c for r in Region}
    sizes[Region.HID] = ch * spec.n_ffn
    sizes[Region.PRIVATE] = MAX_THREADS * c
    sizes[Region.LNOUT] = c
    return aligned_offsets(sizes.items())  # type: ignore[return-value]


# -- loading -------------------------------------------------------------------------------------


def spec_for(path: Path, ckpt: Checkpoint, emb_type: DType, head_type: DType, chunk: int) -> ModelSpec:
    arch, t = ckpt.arch, ckpt.tensors
    layer_types = tuple(
        tuple(matrix_type(path, t[f"blocks.{i}.{MAT_TENSOR_NAMES[m]}"]) for m in Mat) for i in range(arch.n_layer)
    )
    return ModelSpec(
        n_layer=arch.n_layer, n_embd=arch.n_embd, n_vocab=arch.n_vocab, n_ffn=arch.n_ffn,
        layer_types=layer_types, emb_type=emb_type, head_type=head_type,
        ln0_folded=LN0_FOLDED in ckpt.transforms, chunk=chunk,
    )


def layer_weights(ckpt: Checkpoint, spec: ModelSpec, layer: int) -> list[str]:
    """The tensors whose addresses fill layer `layer`'s weight slots, in slot order."""
    return [f"blocks.{layer}.{MAT_TENSOR_NAMES[m]}" for m in Mat]


def params(ckpt: Checkpoint, spec: ModelSpec) -> np.ndarray:
    C = spec.n_embd
    out = np.zeros(spec.params_floats, dtype=np.float32)
    rows = out.reshape(-1, C)
    for i in range(spec.n_layer):
        for vec, suffix in VEC_TENSORS.items():
            v = vector(ckpt, f"blocks.{i}.{suffix}", C)
            if vec is Vec.ATT_DECAY and TIME_DECAY_NEG_EXP not in ckpt.transforms:
                v = -np.exp(v)
            rows[i * len(Vec) + vec] = v
    read_global_vectors(ckpt, rows, len(Vec) * spec.n_layer, spec.ln0_folded)
    return out


def new_state_data(spec: ModelSpec) -> np.ndarray:
    data = np.zeros(spec.state_shape, dtype=np.float32)
    data.reshape(spec.n_layer, -1, spec.n_embd)[:, StateRow.PP, :] = PP_INITIAL
    return data


# -- the forward pass ----------------------------------------------------------------------------


def build_forward_module(spec: ModelSpec) -> ir.Module:
    """An IR module whose `rwkv_forward` runs `spec`'s model; see the module docstring."""
    return _Rwkv4Builder(spec).module


class _Rwkv4Builder(ForwardBuilder):
    Region = Region
    module_prefix = "rwkv4"
    spec: ModelSpec

    def _declare(self) -> None:
        self.wkv = emit_wkv(self.module)
        self.sigmoid = emit_sigmoid(self.module)

    def _mix(self, b: ir.IRBuilder, cur: ir.Value, prev: ir.Value, mix: ir.Value, out: ir.Value) -> None:
        """out = cur·mix + prev·(1 - mix), as the reference computes it."""
        with counted_loop(b, i64(0), i64(self.spec.n_embd), name="c") as c:
            m = load_at(b, mix, c)
            a = b.fmul(load_at(b, cur, c), m)
            p = b.fmul(load_at(b, prev, c), b.fsub(f32(1.0), m))
            store_at(b, b.fadd(a, p), out, c)

    def _token_shift_mix(
        self, b: ir.IRBuilder, scratch: ir.Value, prm: ir.Value, saved: ir.Value, n_tok: ir.Value,
        tid: ir.Value, n: ir.Value, ln_w: int, ln_b: int, mixes: list[tuple[int, Region]],
    ) -> None:
        """For each token owned by this thread: xa = LN(x); each `mixes` output = mix(xa, previous)."""
        C = self.spec.n_embd
        pointers = self._ln_pointers(b, scratch, prm, tid, ln_w, ln_b)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur, prev = self._normed_rows(b, pointers, saved, t)
            for mix_index, region in mixes:
                out = self._row(b, self._region(b, scratch, region), t, C)
                self._mix(b, cur, prev, self._vec(b, prm, mix_index), out)

    def _layer_function(self, types: tuple[DType, ...], index: int) -> ir.Function:
        spec = self.spec
        C, F = spec.n_embd, spec.n_ffn
        fn, b = self._new_layer_function(index)
        scratch, st, prm, wts, n_tok, tid, n, barrier, st_in = fn.args

        def reg(r: Region) -> ir.Value:
            return self._region(b, scratch, r)

        def state_row(row: StateRow, base: ir.Value = st) -> ir.Value:
            return b.gep(base, [i64(int(row) * C)], inbounds=True)

        def weight(m: Mat) -> ir.Value:
            return b.load(b.gep(wts, [i64(int(m))], inbounds=True))

        last = b.sub(n_tok, i64(1))
        c0, c1 = split_range(b, C, tid, n)
        f0, f1 = split_range(b, F, tid, n)

        def then(m: Mat, n_cols: int, r0: ir.Value, r1: ir.Value) -> NextProduct:
            """What a barrier's waiting thread prefetches: this thread's rows of the product after it."""
            return NextProduct(types[m], n_cols, weight(m), r0, r1, n_tok)

        # time mixing
        self._token_shift_mix(
            b, scratch, prm, state_row(StateRow.ATT_XX, st_in), n_tok, tid, n, Vec.LN1_W, Vec.LN1_B,
            [(Vec.ATT_MIX_K, Region.XK), (Vec.ATT_MIX_V, Region.XV), (Vec.ATT_MIX_R, Region.XR)],
        )
        self._sync(b, barrier, n, then(Mat.ATT_KEY, C, c0, c1))
        for m, src, dst in ((Mat.ATT_KEY, Region.XK, Region.K), (Mat.ATT_VALUE, Region.XV, Region.V),
                            (Mat.ATT_RECEPTANCE, Region.XR, Region.R)):
            self._product(b, types[m], C, False, weight(m), reg(src), C, reg(dst), C, n_tok, c0, c1)
        self._copy(b, self._row(b, reg(Region.XA), last, C), state_row(StateRow.ATT_XX), c0, c1)
        self._sync(b, barrier, n, then(Mat.ATT_OUTPUT, C, c0, c1))
        for row in (StateRow.AA, StateRow.BB, StateRow.PP):  # the channels this thread's WKV updates
            self._take_state(b, state_row(row, st_in), state_row(row), c0, c1)
        b.call(self.wkv, [
            reg(Region.K), reg(Region.V), reg(Region.R), reg(Region.OUT), i64(C), n_tok,
            self._vec(b, prm, Vec.ATT_DECAY), self._vec(b, prm, Vec.ATT_FIRST),
            state_row(StateRow.AA), state_row(StateRow.BB), state_row(StateRow.PP), c0, c1,
        ])
        self._sync(b, barrier, n, then(Mat.ATT_OUTPUT, C, c0, c1))
        self._product(b, types[Mat.ATT_OUTPUT], C, True, weight(Mat.ATT_OUTPUT), reg(Region.OUT), C,
                      reg(Region.X), C, n_tok, c0, c1)
        self._sync(b, barrier, n, then(Mat.FFN_KEY, C, f0, f1))

        # channel mixing
        self._token_shift_mix(
            b, scratch, prm, state_row(StateRow.FFN_XX, st_in), n_tok, tid, n, Vec.LN2_W, Vec.LN2_B,
            [(Vec.FFN_MIX_K, Region.XK), (Vec.FFN_MIX_R, Region.XR)],
        )
        self._sync(b, barrier, n, then(Mat.FFN_KEY, C, f0, f1))
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
        self._sync(b, barrier, n, then(Mat.FFN_VALUE, F, c0, c1))
        tmp, x = reg(Region.TMP), reg(Region.X)
        self._product(b, types[Mat.FFN_VALUE], F, False, weight(Mat.FFN_VALUE), hid, F, tmp, C, n_tok, c0, c1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            xt, rt, vt = self._row(b, x, t, C), self._row(b, r2, t, C), self._row(b, tmp, t, C)
            with counted_loop(b, c0, c1, name="c") as c:
                store_at(b, b.fadd(load_at(b, xt, c), b.fmul(load_at(b, rt, c), load_at(b, vt, c))), xt, c)
        self._sync(b, barrier, n)
        b.ret_void()
        return fn
