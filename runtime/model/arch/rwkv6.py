"""RWKV-6 ("Finch", x060) and RWKV-5.2 ("Eagle", x052): tensors, parameter and state layout, and the
layers' forward pass in IR. RWKV-5.2 is RWKV-6 without the data-dependent parts; arch/rwkv5.py runs it
with this module's code (`ModelSpec.version`).

The math is the official package's (rwkv 0.8.32 `att_one_v6_0`/`att_seq_v6_0`, `att_one_v5_1`,
`ffn_one_v6`; /work/shared/RWKV5-7.md §1.3, §1.4). Per layer, with x the LN1 output, sx = x_prev − x:

    RWKV-6: xxx = x + sx·maa_x;  m = tanh(W1·xxx) (5 × D_mix);  m_j = W2_j·m[j], j = w, k, v, r, g
            x_j = x + sx·(maa_j + m_j)                         (data-dependent token shift)
            w = exp(−exp(time_decay + Wd2·tanh(Wd1·x_w)))      (data-dependent decay, float32)
    RWKV-5.2: x_j = x·mix_j + x_prev·(1 − mix_j), j = k, v, r, g;  w = exp(−exp(time_decay)) per channel
    r = Wr·x_r;  k = Wk·x_k;  v = Wv·x_v;  g = silu(Wg·x_g)
    y = WKV(S; r, w, k, v, u = time_faaaa)                  (kernels/wkv6.py)
    x += Wo·((GroupNorm_H(y, eps 64e-5)·ln_x.w + ln_x.b)·g)
    FFN: x += σ(Wr·x2r) ⊙ Wv·relu(Wk·x2k)²                  (x2 the LN2 output, shifted like v5/v6 above)

The official package applies GroupNorm with eps 64e-5 directly (no head_size_divisor: training's
GN(y/8, eps 1e-5) is the same function). Files whose output and FFN-value weights were divided by
2^(layer // n) (llama.cpp's `rescale_every_n_layers`, `ModelSpec.rescale_every`) get the residual
halved after every n-th layer, as those weights expect.

The phases of one layer; work is divided inside each and threads meet at barriers between them:

    LN1, sx and the token-shift input xxx (v6) or the four fixed mixes (v5)   (tokens split) | barrier
    v6: tanh(W1·xxx)                                                     (rows of 5·D_mix) | barrier
    v6: m_j = W2_j·m[j] and the five mixes, for its channels             (channels split)  | barrier
    r, k, v, g products; v6: tanh(Wd1·x_w); att_xx saved                 (rows split)      | barrier
    per head: v6 Wd2 rows, decay; silu(g); WKV; GroupNorm·gate           (heads split)     | barrier
    x += Wo·out                                                          (rows split)      | barrier
    channel mixing as RWKV-4's (LN2 + mixes | relu², σ | x += σr ⊙ Wv·h), then the halving if any.

The LoRA factors are read transposed (`V6_LORA_TRANSPOSED`: rwkv.cpp and llama.cpp store them so),
so every product is rows × the activation and goes through the matrix kernels (smallmat.py for
ranks that are not whole 32-value blocks). time_maa_w2 is (5, C, D_mix): five matrices one after
another, each reading its slice of tanh(W1·xxx).

State per layer: att_xx (C), ffn_xx (C), then the H × N × N float32 WKV matrix (S[h][i][j], i the key
index: the official v5/v6 orientation), i.e. 2 + N rows of C floats.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from llvmlite import ir

from runtime.errors import ModelFileError
from runtime.formats.checkpoint import LN0_FOLDED, V5_DECAY_EXP, V6_LORA_TRANSPOSED, Checkpoint
from runtime.formats.gguf_rwkv6 import RESCALE_KEY
from runtime.jit.irkit import counted_loop, f32, i64, load_at, split_range, store_at
from runtime.jit.kernels.dequant import BLOCK
from runtime.jit.kernels.mathfn import emit_exp, emit_sigmoid
from runtime.jit.kernels.smallmat import SMALLMAT_TYPES
from runtime.jit.kernels.wkv6 import emit_group_norm_gate, emit_wkv6
from runtime.model.arch.base import ForwardBuilder, NextProduct, SpecSizes
from runtime.model.layout import MAX_THREADS, aligned_offsets
from runtime.model.tensor_read import matrix_type, read_global_vectors, vector
from runtime.quant.types import DType

NAME = "rwkv6"
VERSION = "6"
N_MIX = 5  # time_maa_w2's factors, in the order w, k, v, r, g


class Vec(enum.IntEnum):
    """Per-layer float32 vectors of n_embd values, in this order in the parameter block."""

    LN1_W = 0
    LN1_B = 1
    LN2_W = 2
    LN2_B = 3
    MAA_X = 4  # RWKV-6 only
    MAA_W = 5  # RWKV-6 only
    MAA_K = 6  # RWKV-5.2: time_mix_k (the fixed mixes take these four slots)
    MAA_V = 7
    MAA_R = 8
    MAA_G = 9
    DECAY = 10  # RWKV-6: time_decay as stored (raw); RWKV-5.2: exp(−exp(time_decay)), the decay itself
    FIRST = 11  # time_faaaa (H, N) flattened
    LNX_W = 12
    LNX_B = 13
    FFN_MAA_K = 14
    FFN_MAA_R = 15


def vec_tensors(version: str) -> dict[Vec, str]:
    mix = "time_maa" if version == "6" else "time_mix"
    out = {
        Vec.LN1_W: "ln1.weight", Vec.LN1_B: "ln1.bias", Vec.LN2_W: "ln2.weight", Vec.LN2_B: "ln2.bias",
        Vec.MAA_K: f"att.{mix}_k", Vec.MAA_V: f"att.{mix}_v", Vec.MAA_R: f"att.{mix}_r", Vec.MAA_G: f"att.{mix}_g",
        Vec.DECAY: "att.time_decay", Vec.FIRST: "att.time_faaaa", Vec.LNX_W: "att.ln_x.weight",
        Vec.LNX_B: "att.ln_x.bias", Vec.FFN_MAA_K: f"ffn.{mix}_k", Vec.FFN_MAA_R: f"ffn.{mix}_r",
    }
    if version == "6":
        out[Vec.MAA_X] = "att.time_maa_x"
        out[Vec.MAA_W] = "att.time_maa_w"
    return out


class Mat(enum.IntEnum):
    """Per-layer weight matrices, in this order in the weight pointer table."""

    RECEPTANCE = 0
    KEY = 1
    VALUE = 2
    GATE = 3
    OUTPUT = 4
    MAA_W1 = 5  # RWKV-6 only (address 0 for RWKV-5.2)
    MAA_W2 = 6
    DECAY_W1 = 7
    DECAY_W2 = 8
    FFN_KEY = 9
    FFN_RECEPTANCE = 10
    FFN_VALUE = 11


MAT_TENSOR_NAMES = {
    Mat.RECEPTANCE: "att.receptance.weight", Mat.KEY: "att.key.weight", Mat.VALUE: "att.value.weight",
    Mat.GATE: "att.gate.weight", Mat.OUTPUT: "att.output.weight", Mat.MAA_W1: "att.time_maa_w1",
    Mat.MAA_W2: "att.time_maa_w2", Mat.DECAY_W1: "att.time_decay_w1", Mat.DECAY_W2: "att.time_decay_w2",
    Mat.FFN_KEY: "ffn.key.weight", Mat.FFN_RECEPTANCE: "ffn.receptance.weight", Mat.FFN_VALUE: "ffn.value.weight",
}
LAYER_MATRICES = tuple(MAT_TENSOR_NAMES.values())
_LORA = (Mat.MAA_W1, Mat.MAA_W2, Mat.DECAY_W1, Mat.DECAY_W2)


class StateRow(enum.IntEnum):
    """Rows of one layer's state; WKV's H·N·N floats follow as N rows of C."""

    ATT_XX = 0
    FFN_XX = 1
    WKV = 2


class Region(enum.IntEnum):
    """Regions of the scratch buffer: chunk × n_embd floats unless said otherwise."""

    X = 0
    XA = 1  # LN output
    SX = 2  # x_prev − x (RWKV-6)
    XXX = 3
    XW = 4
    XK = 5
    XV = 6
    XR = 7
    XG = 8
    R = 9
    K = 10
    V = 11
    G = 12
    W = 13
    OUT = 14
    R2 = 15
    TMP = 16
    HM = 17  # chunk × 5·D_mix
    HD = 18  # chunk × D_decay
    HID = 19  # chunk × n_ffn
    PRIVATE = 20  # MAX_THREADS × n_embd, one row per thread
    LNOUT = 21  # n_embd


_MIX_REGIONS = (Region.XW, Region.XK, Region.XV, Region.XR, Region.XG)  # the order of time_maa_w2
_MIX_VECS = (Vec.MAA_W, Vec.MAA_K, Vec.MAA_V, Vec.MAA_R, Vec.MAA_G)


@dataclass(frozen=True)
class ModelSpec(SpecSizes):
    """What the compiled code depends on: version, dimensions, LoRA ranks and each matrix's type."""

    VEC: ClassVar = Vec
    MAT: ClassVar = Mat
    REGION: ClassVar = Region

    version: str  # "6" or "5.2"
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ffn: int
    head_size: int
    ranks: tuple[int, int]  # D_mix, D_decay (0, 0 for RWKV-5.2)
    layer_types: tuple[tuple[DType, ...], ...]  # per layer, indexed by Mat
    emb_type: DType
    head_type: DType
    ln0_folded: bool
    chunk: int = 128
    rescale_every: int = 0  # halve the residual after every n-th layer (llama.cpp's rescaled files)
    # Parts left out of the compiled code, for bench/rwkv6_profile.py only (the results are wrong):
    # "matrices" (r, k, v, g, output, FFN products), "lora" (the four LoRA products), "ddlerp" (the whole
    # data-dependent token shift and decay: LoRA products, tanh, mixes, exp(−exp)), "heads" (silu(g),
    # WKV, GroupNorm·gate).
    omit: frozenset[str] = frozenset()

    @property
    def arch(self) -> str:
        return "rwkv6" if self.version == "6" else "rwkv5"

    @property
    def ddlerp(self) -> bool:
        return self.version == "6"

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

    def mat_shape(self, m: Mat) -> tuple[int, ...]:
        """The stored shape of matrix `m` (LoRA factors transposed; time_maa_w2 as (5, C, D_mix))."""
        C, F = self.n_embd, self.n_ffn
        dm, dd = self.ranks
        return {
            Mat.MAA_W1: (N_MIX * dm, C), Mat.MAA_W2: (N_MIX, C, dm), Mat.DECAY_W1: (dd, C), Mat.DECAY_W2: (C, dd),
            Mat.FFN_KEY: (F, C), Mat.FFN_VALUE: (C, F),
        }.get(m, (C, C))


def _region_offsets(spec: ModelSpec) -> dict[Region, int]:
    c, ch = spec.n_embd, spec.chunk
    sizes = {r: ch * c for r in Region}
    sizes[Region.HM] = ch * N_MIX * spec.ranks[0]
    sizes[Region.HD] = ch * spec.ranks[1]
    sizes[Region.HID] = ch * spec.n_ffn
    sizes[Region.PRIVATE] = MAX_THREADS * c
    sizes[Region.LNOUT] = c
    return aligned_offsets(sizes.items())  # type: ignore[return-value]


# -- loading -------------------------------------------------------------------------------------


def rescale_every(path: Path, ckpt: Checkpoint) -> int:
    """llama.cpp's `rwkv6.rescale_every_n_layers` (0 where absent): the file's att.output and ffn.value
    weights are divided by 2^(layer // n), so the residual is halved after every n-th layer. Trusted:
    whether the weights really were divided cannot be checked."""
    n = ckpt.metadata.get(RESCALE_KEY, 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 1 << 16:
        raise ModelFileError(path, f"the metadata key {RESCALE_KEY} is {n!r}, not a layer count")
    return n


def spec_for(path: Path, ckpt: Checkpoint, emb_type: DType, head_type: DType, chunk: int) -> ModelSpec:
    """The spec of `ckpt` (RWKV-6 or RWKV-5.2), every matrix the forward pass reads checked for shape."""
    arch = ckpt.arch
    version = arch.version
    if version == "6" and V6_LORA_TRANSPOSED not in ckpt.transforms:
        raise ModelFileError(
            path, "this RWKV-6 file stores its LoRA factors untransposed; convert it first: "
            f"rwkv-tui convert '{path}' model.gguf"
        )
    head_size = arch.head_size
    if head_size % 8 or head_size > 256:
        raise ModelFileError(path, f"head size {head_size} is not supported (a multiple of 8 up to 256)")
    ranks = arch.mix_ranks if version == "6" and arch.mix_ranks else (0, 0)
    spec = ModelSpec(version, arch.n_layer, arch.n_embd, arch.n_vocab, arch.n_ffn, head_size, ranks, (),
                     emb_type, head_type, LN0_FOLDED in ckpt.transforms, chunk, rescale_every(path, ckpt))
    layer_types = []
    for i in range(spec.n_layer):
        types = []
        for m in Mat:
            if m in _LORA and not spec.ddlerp:
                types.append(DType.F32)  # unused
                continue
            name = f"blocks.{i}.{MAT_TENSOR_NAMES[m]}"
            t = ckpt.tensors.get(name)
            if t is None:
                raise ModelFileError(path, f"not a complete {arch.name} model: '{name}' is missing")
            want = spec.mat_shape(m)
            if t.shape != want:
                raise ModelFileError(path, f"tensor '{name}' has shape {t.shape}, expected {want}")
            allowed = None if want[-1] % BLOCK == 0 else frozenset(SMALLMAT_TYPES)
            types.append(matrix_type(path, t) if allowed is None else matrix_type(path, t, allowed))
        layer_types.append(tuple(types))
    for name in ("emb.weight", "head.weight"):
        t = ckpt.tensors[name]
        if t.shape != (arch.n_vocab, arch.n_embd):
            raise ModelFileError(path, f"tensor '{name}' has shape {t.shape}, expected {(arch.n_vocab, arch.n_embd)}")
    return dataclasses.replace(spec, layer_types=tuple(layer_types))


def layer_weights(ckpt: Checkpoint, spec: ModelSpec, layer: int) -> list[str | None]:
    """The tensors whose addresses fill layer `layer`'s weight slots (None: unused)."""
    return [None if m in _LORA and not spec.ddlerp else f"blocks.{layer}.{MAT_TENSOR_NAMES[m]}" for m in Mat]


def params(ckpt: Checkpoint, spec: ModelSpec) -> np.ndarray:
    C = spec.n_embd
    out = np.zeros(spec.params_floats, dtype=np.float32)
    rows = out.reshape(-1, C)
    for i in range(spec.n_layer):
        for vec, suffix in vec_tensors(spec.version).items():
            v = vector(ckpt, f"blocks.{i}.{suffix}", C)
            if vec is Vec.DECAY and not spec.ddlerp and V5_DECAY_EXP not in ckpt.transforms:
                v = np.exp(-np.exp(v.astype(np.float64))).astype(np.float32)
            rows[i * len(Vec) + vec] = v
    read_global_vectors(ckpt, rows, len(Vec) * spec.n_layer, spec.ln0_folded)
    return out


def new_state_data(spec: ModelSpec) -> np.ndarray:
    return np.zeros(spec.state_shape, dtype=np.float32)


# -- the forward pass ----------------------------------------------------------------------------


def build_forward_module(spec: ModelSpec) -> ir.Module:
    """An IR module whose `rwkv_forward` runs `spec`'s model; see the module docstring."""
    return _Rwkv6Builder(spec).module


class _Rwkv6Builder(ForwardBuilder):
    Region = Region
    spec: ModelSpec

    @property
    def module_prefix(self) -> str:  # type: ignore[override]
        return self.spec.arch

    def _declare(self) -> None:
        N = self.spec.head_size
        self.exp = emit_exp(self.module)
        self.sigmoid = emit_sigmoid(self.module)
        self.wkv = emit_wkv6(self.module, N)
        self.gn_gate = emit_group_norm_gate(self.module, N)

    def _layer_key(self, layer: int, types: tuple[DType, ...]) -> tuple[bool, tuple[DType, ...]]:
        n = self.spec.rescale_every
        return bool(n) and (layer + 1) % n == 0, types

    def _layer_function(self, key: tuple[bool, tuple[DType, ...]], index: int) -> ir.Function:
        halve, types = key
        spec = self.spec
        C, F, N = spec.n_embd, spec.n_ffn, spec.head_size
        dm, dd = spec.ranks
        fn, b = self._new_layer_function(index)
        scratch, st, prm, wts, n_tok, tid, n, barrier, st_in = fn.args
        big, heads = "matrices" not in spec.omit, "heads" not in spec.omit
        ddlerp = spec.ddlerp and "ddlerp" not in spec.omit
        lora = "lora" not in spec.omit

        def reg(r: Region) -> ir.Value:
            return self._region(b, scratch, r)

        def reg_row(r: Region, t: ir.Value, width: int = C) -> ir.Value:
            return self._row(b, reg(r), t, width)

        def weight(m: Mat) -> ir.Value:
            return b.load(b.gep(wts, [i64(int(m))], inbounds=True))

        def vec(v: Vec) -> ir.Value:
            return self._vec(b, prm, v)

        def present(m: Mat) -> bool:
            """Whether the product with `m` is compiled (spec.omit leaves parts out for the profiles)."""
            return lora if m in _LORA else big

        def matrix(m: Mat, src: ir.Value, ldx: int, dst: Region, r0: ir.Value, r1: ir.Value,
                   accumulate: bool = False, w: ir.Value | None = None) -> None:
            if not present(m):
                return
            shape = spec.mat_shape(m)
            rows, cols = shape[-2], shape[-1]
            self._matrix(b, types[m], cols, accumulate, weight(m) if w is None else w, src, ldx, reg(dst), rows,
                         n_tok, r0, r1)

        att_xx = b.gep(st, [i64(StateRow.ATT_XX * C)], inbounds=True)
        ffn_xx = b.gep(st, [i64(StateRow.FFN_XX * C)], inbounds=True)
        wkv_state = b.gep(st, [i64(StateRow.WKV * C)], inbounds=True)
        att_xx_in = b.gep(st_in, [i64(StateRow.ATT_XX * C)], inbounds=True)
        ffn_xx_in = b.gep(st_in, [i64(StateRow.FFN_XX * C)], inbounds=True)
        wkv_in = b.gep(st_in, [i64(StateRow.WKV * C)], inbounds=True)
        last = b.sub(n_tok, i64(1))
        c0, c1 = split_range(b, C, tid, n)
        f0, f1 = split_range(b, F, tid, n)
        h0, h1 = split_range(b, spec.n_head, tid, n)
        hc0, hc1 = b.mul(h0, i64(N)), b.mul(h1, i64(N))
        m0, m1 = split_range(b, N_MIX * dm, tid, n)

        def then(m: Mat, r0: ir.Value, r1: ir.Value) -> NextProduct | None:
            """What a barrier's waiting thread prefetches: this thread's rows of the product after it."""
            if not present(m):
                return None
            return NextProduct(types[m], spec.mat_shape(m)[-1], weight(m), r0, r1, n_tok)

        # LN1 and the token shift: sx and xxx (v6), or the four fixed mixes (v5)
        pointers = self._ln_pointers(b, scratch, prm, tid, Vec.LN1_W, Vec.LN1_B)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur, prev = self._normed_rows(b, pointers, att_xx_in, t)
            if spec.ddlerp:
                sx_row, xxx_row, maa_x = reg_row(Region.SX, t), reg_row(Region.XXX, t), vec(Vec.MAA_X)
                with counted_loop(b, i64(0), i64(C), name="c") as c:
                    x = load_at(b, cur, c)
                    d = b.fsub(load_at(b, prev, c), x)
                    store_at(b, d, sx_row, c)
                    store_at(b, b.fadd(x, b.fmul(d, load_at(b, maa_x, c))), xxx_row, c)
            else:
                outs = [(vec(v), reg_row(r, t)) for v, r in zip(_MIX_VECS[1:], _MIX_REGIONS[1:], strict=True)]
                with counted_loop(b, i64(0), i64(C), name="c") as c:
                    x, p = load_at(b, cur, c), load_at(b, prev, c)
                    for mix, out in outs:  # x·mix + prev·(1 − mix), as the official package computes it
                        m = load_at(b, mix, c)
                        store_at(b, b.fadd(b.fmul(x, m), b.fmul(p, b.fsub(f32(1.0), m))), out, c)
        self._sync(b, barrier, n, then(Mat.MAA_W1, m0, m1) if ddlerp else then(Mat.RECEPTANCE, c0, c1))

        if ddlerp:
            # tanh(W1·xxx), rows of 5·D_mix split
            matrix(Mat.MAA_W1, reg(Region.XXX), C, Region.HM, m0, m1)
            with counted_loop(b, i64(0), n_tok, name="t") as t:
                h = reg_row(Region.HM, t, N_MIX * dm)
                with counted_loop(b, m0, m1, name="d") as j:
                    store_at(b, self._tanh(b, load_at(b, h, j)), h, j)
            self._sync(b, barrier, n, then(Mat.MAA_W2, c0, c1))
            # m_j = W2_j·m[j] for this thread's channels, then x_j = x + sx·(maa_j + m_j) in place
            w2 = weight(Mat.MAA_W2)
            part = types[Mat.MAA_W2].nbytes((C, dm))
            for j, region in enumerate(_MIX_REGIONS):
                src = b.gep(reg(Region.HM), [i64(j * dm)], inbounds=True)
                matrix(Mat.MAA_W2, src, N_MIX * dm, region, c0, c1, w=b.gep(w2, [i64(j * part)], inbounds=True))
            with counted_loop(b, i64(0), n_tok, name="t") as t:
                xa, sx = reg_row(Region.XA, t), reg_row(Region.SX, t)
                outs = [(vec(v), reg_row(r, t)) for v, r in zip(_MIX_VECS, _MIX_REGIONS, strict=True)]
                with counted_loop(b, c0, c1, name="c") as c:
                    x, d = load_at(b, xa, c), load_at(b, sx, c)
                    for maa, out in outs:
                        store_at(b, b.fadd(x, b.fmul(d, b.fadd(load_at(b, maa, c), load_at(b, out, c)))), out, c)
            self._sync(b, barrier, n, then(Mat.RECEPTANCE, c0, c1))

        # r, k, v, g products; tanh(Wd1·x_w) (v6); att_xx saved
        for m, src, dst in ((Mat.RECEPTANCE, Region.XR, Region.R), (Mat.KEY, Region.XK, Region.K),
                            (Mat.VALUE, Region.XV, Region.V), (Mat.GATE, Region.XG, Region.G)):
            matrix(m, reg(src), C, dst, c0, c1)
        if ddlerp:
            d0, d1 = split_range(b, dd, tid, n)
            matrix(Mat.DECAY_W1, reg(Region.XW), C, Region.HD, d0, d1)
            with counted_loop(b, i64(0), n_tok, name="t") as t:
                h = reg_row(Region.HD, t, dd)
                with counted_loop(b, d0, d1, name="d") as j:
                    store_at(b, self._tanh(b, load_at(b, h, j)), h, j)
        self._copy(b, reg_row(Region.XA, last), att_xx, c0, c1)
        self._sync(b, barrier, n, then(Mat.DECAY_W2, hc0, hc1) if ddlerp else then(Mat.OUTPUT, c0, c1))

        # per head: decay (v6), silu(g), WKV, GroupNorm·gate
        if ddlerp:
            matrix(Mat.DECAY_W2, reg(Region.HD), dd, Region.W, hc0, hc1)
        with counted_loop(b, i64(0), n_tok if ddlerp or heads else i64(0), name="t") as t:
            row = b.mul(t, i64(C))
            with counted_loop(b, hc0, hc1, name="c") as c:
                tc = b.add(row, c)
                if ddlerp:
                    z = b.fadd(load_at(b, vec(Vec.DECAY), c), load_at(b, reg(Region.W), tc))
                    w = b.call(self.exp, [b.fneg(b.call(self.exp, [z]))])
                    store_at(b, w, reg(Region.W), tc)
                if heads:
                    g = load_at(b, reg(Region.G), tc)
                    store_at(b, b.fmul(g, b.call(self.sigmoid, [g])), reg(Region.G), tc)

        def at(r: Region, c: ir.Value) -> ir.Value:
            return b.gep(reg(r), [c], inbounds=True)

        with counted_loop(b, h0, h1, name="h") as h:
            hc = b.mul(h, i64(N))
            block = b.gep(wkv_state, [b.mul(hc, i64(N))], inbounds=True)
            self._take_state(b, b.gep(wkv_in, [b.mul(hc, i64(N))], inbounds=True), block, i64(0), i64(N * N))
            if heads:
                decay, ldw = (at(Region.W, hc), C) if spec.ddlerp else (b.gep(vec(Vec.DECAY), [hc], inbounds=True), 0)
                b.call(self.wkv, [
                    block, at(Region.R, hc), decay, at(Region.K, hc), at(Region.V, hc),
                    b.gep(vec(Vec.FIRST), [hc], inbounds=True), at(Region.OUT, hc), i64(C), i64(ldw), n_tok,
                ])
            self._note_non_finite(b, scratch, tid, block, N * N)
        with counted_loop(b, i64(0), n_tok if heads else i64(0), name="t") as t:
            row = b.mul(t, i64(C))
            with counted_loop(b, hc0, hc1, N, name="h") as hc:
                tc = b.add(row, hc)
                b.call(self.gn_gate, [at(Region.OUT, tc), b.gep(vec(Vec.LNX_W), [hc], inbounds=True),
                                      b.gep(vec(Vec.LNX_B), [hc], inbounds=True), at(Region.G, tc)])
        self._sync(b, barrier, n, then(Mat.OUTPUT, c0, c1))
        matrix(Mat.OUTPUT, reg(Region.OUT), C, Region.X, c0, c1, accumulate=True)
        self._sync(b, barrier, n, then(Mat.FFN_KEY, f0, f1))

        # channel mixing: xk = x + sx·maa_k (v6) or x·mix + prev·(1 − mix) (v5)
        pointers = self._ln_pointers(b, scratch, prm, tid, Vec.LN2_W, Vec.LN2_B)
        with self._token_loop(b, n_tok, tid, n) as t:
            cur, prev = self._normed_rows(b, pointers, ffn_xx_in, t)
            outs = [(vec(Vec.FFN_MAA_K), reg_row(Region.XK, t)), (vec(Vec.FFN_MAA_R), reg_row(Region.XR, t))]
            with counted_loop(b, i64(0), i64(C), name="c") as c:
                x, p = load_at(b, cur, c), load_at(b, prev, c)
                for mix, out in outs:
                    m = load_at(b, mix, c)
                    if spec.ddlerp:
                        store_at(b, b.fadd(x, b.fmul(b.fsub(p, x), m)), out, c)
                    else:
                        store_at(b, b.fadd(b.fmul(x, m), b.fmul(p, b.fsub(f32(1.0), m))), out, c)
        self._sync(b, barrier, n, then(Mat.FFN_KEY, f0, f1))
        hid, r2 = reg(Region.HID), reg(Region.R2)
        matrix(Mat.FFN_KEY, reg(Region.XK), C, Region.HID, f0, f1)
        matrix(Mat.FFN_RECEPTANCE, reg(Region.XR), C, Region.R2, c0, c1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            h = self._row(b, hid, t, F)
            with counted_loop(b, f0, f1, name="f") as j:
                v = load_at(b, h, j)
                v = b.select(b.fcmp_ordered(">", v, f32(0.0)), v, f32(0.0))
                store_at(b, b.fmul(v, v), h, j)
            rr = self._row(b, r2, t, C)
            with counted_loop(b, c0, c1, name="c") as c:
                store_at(b, b.call(self.sigmoid, [load_at(b, rr, c)]), rr, c)
        self._copy(b, reg_row(Region.XA, last), ffn_xx, c0, c1)
        self._sync(b, barrier, n, then(Mat.FFN_VALUE, c0, c1))
        tmp, x_reg = reg(Region.TMP), reg(Region.X)
        matrix(Mat.FFN_VALUE, hid, F, Region.TMP, c0, c1)
        with counted_loop(b, i64(0), n_tok, name="t") as t:
            xt, rt, vt = self._row(b, x_reg, t, C), self._row(b, r2, t, C), self._row(b, tmp, t, C)
            with counted_loop(b, c0, c1, name="c") as c:
                y = b.fadd(load_at(b, xt, c), b.fmul(load_at(b, rt, c), load_at(b, vt, c)))
                store_at(b, b.fmul(y, f32(0.5)) if halve else y, xt, c)
        self._sync(b, barrier, n)
        b.ret_void()
        return fn
