"""Quantize rows straight from their stored bytes (bf16, f16 or f32) into ggml blocks or F16/F32 (IR).

One kernel per (source type, target type), generic in the row length:

    i64 quantize_<src>_to_<dst>(i8* src, i8* dst, i64 n_rows, i64 n_cols,
                                i64* odd, i64 odd_cap, i64* n_odd)

`src` holds n_rows × n_cols little-endian values; `dst` receives n_rows × dst.row_bytes(n_cols) bytes.
The result is -1, or the first row holding a NaN or an infinity (rows before it are written, the rest
is not). Every block is checked for non-finite values before it is encoded.

The float arithmetic is the same sequence of IEEE float32 operations as `runtime/quant/codec.py`
(no fast-math on anything that decides a byte), so blocks come out byte-identical:

    Q8_0   d = amax / 127; inv = 1/d (0 if d = 0); q = trunc(x·inv + copysign(0.49999997, x·inv))
    Q4_0/Q5_0   e = first value of largest magnitude; d = e / -8 (-16); q = min(trunc(x·inv + 8.5), 15)
    Q4_1/Q5_1   d = (max - min) / 15 (31); q = min(trunc((x - min)·inv + 0.5), 15 (31)); m = min

Blocks whose bytes hang on numpy implementation details are not encoded exactly here; their indices
(block number from the start of the call) go to `odd` (up to `odd_cap`; `*n_odd` gets the total count)
and the caller re-encodes them with codec.py. They are: an inverse scale that overflows (a denormal
scale) or an infinite scale (max - min overflows), where numpy's float → int cast of ±inf/NaN decides
the codes; and, for Q4_1/Q5_1, a block whose min or max is a zero while both +0 and -0 occur in it,
where the sign of numpy's reduction result decides m's sign. Real weights practically never have such
blocks.

Float → half conversions (scales, F16 output) round to nearest even, with F16C's `vcvtps2ph` where
the host has it and an exact integer routine otherwise (baseline x86-64 has no half instructions
and JIT code cannot call compiler-rt).
"""

from __future__ import annotations

import struct

from llvmlite import ir

from runtime.jit.irkit import F16, F32, I1, I8, I8P, I16, I32, I64, I64P, counted_loop, get_or_define, intrinsic
from runtime.jit.kernels.irhelpers import (
    PIECES,
    V8F,
    V8I32,
    VL,
    Var,
    byte_ptr,
    half_to_float,
    i32c,
    load_as,
    native_half,
    shuffle,
    splat,
    splat_const,
)
from runtime.quant.types import DType

SOURCES: tuple[DType, ...] = (DType.BF16, DType.F16, DType.F32)
TARGETS: tuple[DType, ...] = (DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, DType.F16, DType.F32)
QUANTIZE_TYPE = ir.FunctionType(I64, [I8P, I8P, I64, I64, I64P, I64, I64P])

QK = 32
V8I16 = ir.VectorType(I16, VL)
V8I1 = ir.VectorType(I1, VL)
NNAN_NSZ = ("nnan", "nsz")  # used only after a block is known to be finite, and never where a zero's sign counts
_JUST_BELOW_HALF = struct.unpack("<f", struct.pack("<I", 0x3EFFFFFF))[0]  # nextafter(0.5f, 0)
_SIGN = 0x80000000
_ABS = 0x7FFFFFFF
_EXP = 0x7F800000


def kernel_name(src: DType, dst: DType) -> str:
    """`quantize_bf16_to_q5_1`, …"""
    return f"quantize_{src.name.lower()}_to_{dst.name.lower()}"


def check_pair(src: DType, dst: DType) -> None:
    """ValueError unless a kernel exists for reading `src` and writing `dst`."""
    if src not in SOURCES:
        raise ValueError(f"no native quantizer reads {src.name} (only {', '.join(t.name for t in SOURCES)})")
    if dst not in TARGETS:
        raise ValueError(f"no native quantizer writes {dst.name}")


# --- small IR pieces -------------------------------------------------------------------------------


def _c(ty: ir.Type, v: int | float) -> ir.Constant:
    return splat_const(ty, v) if isinstance(ty, ir.VectorType) else ir.Constant(ty, v)


def _int_type_like(ty: ir.Type, width: int) -> ir.Type:
    it = ir.IntType(width)
    return ir.VectorType(it, ty.count) if isinstance(ty, ir.VectorType) else it


def _fabs(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    suffix = f"v{x.type.count}f32" if isinstance(x.type, ir.VectorType) else "f32"
    return b.call(intrinsic(b.module, f"llvm.fabs.{suffix}", x.type, [x.type]), [x])


def float_to_half(b: ir.IRBuilder, x: ir.Value, native: bool) -> ir.Value:
    """IEEE float32 → half bits (i16 or <n x i16>), round to nearest even, overflow to ±inf.

    NaN gives a quiet NaN without its payload (never reached: callers check values are finite)."""
    if native:
        half_ty = ir.VectorType(F16, x.type.count) if isinstance(x.type, ir.VectorType) else F16
        return b.bitcast(b.fptrunc(x, half_ty), _int_type_like(x.type, 16))
    ity = _int_type_like(x.type, 32)
    w = b.bitcast(x, ity)
    sign = b.and_(b.lshr(w, _c(ity, 16)), _c(ity, 0x8000))
    a = b.and_(w, _c(ity, _ABS))
    # normal halves: rebias the exponent, round the 13 dropped bits to nearest even (a carry may
    # ripple into the exponent, up to infinity)
    odd = b.and_(b.lshr(a, _c(ity, 13)), _c(ity, 1))
    normal = b.lshr(b.add(b.add(a, _c(ity, 0xC8000FFF - (1 << 32))), odd), _c(ity, 13))
    # subnormal halves: adding 0.5 lines the half's last mantissa bit up with float's, and the float
    # addition rounds to nearest even
    fty = x.type
    shifted = b.fadd(b.bitcast(a, fty), _c(fty, 0.5))
    subnormal = b.sub(b.bitcast(shifted, ity), _c(ity, 0x3F000000))
    big = b.select(b.icmp_unsigned(">", a, _c(ity, _EXP)), _c(ity, 0x7E00), _c(ity, 0x7C00))
    r = b.select(b.icmp_unsigned("<", a, _c(ity, 0x38800000)), subnormal, normal)
    r = b.select(b.icmp_unsigned(">=", a, _c(ity, 0x47800000)), big, r)
    return b.trunc(b.or_(r, sign), _int_type_like(x.type, 16))


class _Values:
    """32 values of a block: four <8 x float> pieces and their bit patterns as <8 x i32>."""

    def __init__(self, xs: list[ir.Value], bits: list[ir.Value]) -> None:
        self.xs, self.bits = xs, bits


def _load_block(b: ir.IRBuilder, src: DType, p: ir.Value, native: bool) -> _Values:
    xs, bits = [], []
    for k in range(PIECES):
        if src is DType.BF16:
            w = b.shl(b.zext(load_as(b, p, 2 * VL * k, V8I16), V8I32), splat_const(V8I32, 16))
            x = b.bitcast(w, V8F)
        elif src is DType.F16:
            x = half_to_float(b, load_as(b, p, 2 * VL * k, V8I16), native)
            w = b.bitcast(x, V8I32)
        else:
            x = load_as(b, p, 4 * VL * k, V8F)
            w = b.bitcast(x, V8I32)
        xs.append(x)
        bits.append(w)
    return _Values(xs, bits)


def _load_scalar(b: ir.IRBuilder, src: DType, p: ir.Value, native: bool) -> ir.Value:
    if src is DType.BF16:
        return b.bitcast(b.shl(b.zext(load_as(b, p, 0, I16), I32), i32c(16)), F32)
    if src is DType.F16:
        return half_to_float(b, load_as(b, p, 0, I16), native)
    return load_as(b, p, 0, F32)


def _mask32(b: ir.IRBuilder, masks: list[ir.Value]) -> ir.Value:
    """Four <8 x i1> lane masks as one i32, bit j for value j."""
    word = None
    for k, m in enumerate(masks):
        part = b.zext(b.bitcast(m, I8), I32)
        if k:
            part = b.shl(part, i32c(8 * k))
        word = part if word is None else b.or_(word, part)
    return word


def _nonfinite_masks(b: ir.IRBuilder, v: _Values) -> list[ir.Value]:
    exp = splat_const(V8I32, _EXP)
    return [b.icmp_unsigned("==", b.and_(w, exp), exp) for w in v.bits]


def _any(b: ir.IRBuilder, masks: list[ir.Value]) -> ir.Value:
    m = masks[0]
    for other in masks[1:]:
        m = b.or_(m, other)
    return b.call(intrinsic(b.module, "llvm.vector.reduce.or.v8i1", I1, [V8I1]), [m])


def _vreduce(b: ir.IRBuilder, name: str, pieces: list[ir.Value], flags: tuple[str, ...] = ()) -> ir.Value:
    """Reduce four vectors to one scalar: `name` is 'smax' (i32) or 'fmax'/'fmin' (float)."""
    ty = pieces[0].type
    elem = "i32" if name == "smax" else "f32"
    pair = {"smax": "smax", "fmax": "maxnum", "fmin": "minnum"}[name]
    op = intrinsic(b.module, f"llvm.{pair}.v8{elem}", ty, [ty, ty])
    a = b.call(op, [pieces[0], pieces[1]], fastmath=flags)
    c = b.call(op, [pieces[2], pieces[3]], fastmath=flags)
    v = b.call(op, [a, c], fastmath=flags)
    red = intrinsic(b.module, f"llvm.vector.reduce.{name}.v8{elem}", ty.element, [ty])
    return b.call(red, [v], fastmath=flags)


def _inverse(b: ir.IRBuilder, d: ir.Value) -> ir.Value:
    """1/d, and 0 where d is 0 (float32)."""
    return b.select(b.fcmp_ordered("==", d, ir.Constant(F32, 0.0)), ir.Constant(F32, 0.0),
                    b.fdiv(ir.Constant(F32, 1.0), d))


def _is_inf(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.fcmp_ordered("==", _fabs(b, x), ir.Constant(F32, float("inf")))


def _concat(b: ir.IRBuilder, pieces: list[ir.Value]) -> ir.Value:
    while len(pieces) > 1:
        n = pieces[0].type.count
        pieces = [shuffle(b, pieces[i], pieces[i + 1], list(range(2 * n))) for i in range(0, len(pieces), 2)]
    return pieces[0]


def _store(b: ir.IRBuilder, value: ir.Value, base: ir.Value, offset: int) -> None:
    b.store(value, b.bitcast(byte_ptr(b, base, offset), value.type.as_pointer()), align=1)


def _store_codes(b: ir.IRBuilder, q: list[ir.Value], out: ir.Value, qs_at: int, qh_at: int | None) -> None:
    """Codes (four <8 x i32>, values 0-31) as nibble bytes (value j low, j+16 high) and the high-bit word."""
    if qh_at is not None:
        sixteen = splat_const(V8I32, 16)
        zero = splat_const(V8I32, 0)
        hi = [b.icmp_unsigned("!=", b.and_(c, sixteen), zero) for c in q]
        _store(b, _mask32(b, hi), out, qh_at)
        low = splat_const(V8I32, 15)
        q = [b.and_(c, low) for c in q]
    four = splat_const(V8I32, 4)
    packed = [b.or_(q[w], b.shl(q[w + 2], four)) for w in (0, 1)]
    _store(b, b.trunc(_concat(b, packed), ir.VectorType(I8, 2 * VL)), out, qs_at)


# --- the kernels -----------------------------------------------------------------------------------


class _Emitter:
    def __init__(self, fn: ir.Function, src: DType, dst: DType, native: bool) -> None:
        self.fn, self.src, self.dst, self.native = fn, src, dst, native
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        names = ("src", "dst", "n_rows", "n_cols", "odd", "odd_cap", "n_odd")
        for arg, name in zip(fn.args, names, strict=True):
            arg.name = name
        for arg in (fn.args[0], fn.args[1], fn.args[4], fn.args[6]):
            arg.add_attribute("noalias")
        self.src_p, self.dst_p, self.n_rows, self.n_cols, self.odd, self.odd_cap, self.n_odd_p = fn.args
        self.n_odd = Var(self.b, ir.Constant(I64, 0), "n_odd")
        self.value_bytes = src.block_bytes

    def finish(self, result: ir.Value) -> None:
        self.b.store(self.n_odd.get(), self.n_odd_p)
        self.b.ret(result)

    def record_odd(self, cond: ir.Value, blk: ir.Value) -> None:
        b = self.b
        with b.if_then(cond):
            n = self.n_odd.get()
            with b.if_then(b.icmp_signed("<", n, self.odd_cap)):
                b.store(blk, b.gep(self.odd, [n], inbounds=True))
            self.n_odd.set(b.add(n, ir.Constant(I64, 1)))

    # quantized targets: one block of 32 values at a time

    def blocks(self) -> None:
        b = self.b
        per_row = b.sdiv(self.n_cols, ir.Constant(I64, QK))
        n_blocks = b.mul(self.n_rows, per_row)
        src_stride = ir.Constant(I64, QK * self.value_bytes)
        dst_stride = ir.Constant(I64, self.dst.block_bytes)
        with counted_loop(b, 0, n_blocks, name="blk") as blk:
            v = _load_block(b, self.src, byte_ptr(b, self.src_p, b.mul(blk, src_stride)), self.native)
            with b.if_then(_any(b, _nonfinite_masks(b, v)), likely=False):
                self.finish(b.sdiv(blk, per_row))
            out = byte_ptr(b, self.dst_p, b.mul(blk, dst_stride))
            if self.dst is DType.Q8_0:
                odd = self.q8_0(v, out)
            elif self.dst in (DType.Q4_0, DType.Q5_0):
                odd = self.symmetric(v, out)
            else:
                odd = self.affine(v, out)
            self.record_odd(odd, blk)
        self.finish(ir.Constant(I64, -1))

    def half(self, x: ir.Value) -> ir.Value:
        return float_to_half(self.b, x, self.native)

    def q8_0(self, v: _Values, out: ir.Value) -> ir.Value:
        b = self.b
        absmask = splat_const(V8I32, _ABS)
        amax = b.bitcast(_vreduce(b, "smax", [b.and_(w, absmask) for w in v.bits]), F32)
        d = b.fdiv(amax, ir.Constant(F32, 127.0))
        inv = _inverse(b, d)
        odd = _is_inf(b, inv)
        inv_v = splat(b, b.select(odd, ir.Constant(F32, 0.0), inv))
        fcopysign = intrinsic(b.module, "llvm.copysign.v8f32", V8F, [V8F, V8F])
        below_half = splat_const(V8F, _JUST_BELOW_HALF)
        codes = []
        for x in v.xs:
            t = b.fmul(x, inv_v)
            t = b.fadd(t, b.call(fcopysign, [below_half, t]))
            codes.append(b.fptosi(t, V8I32))
        _store(b, self.half(d), out, 0)
        _store(b, b.trunc(_concat(b, codes), ir.VectorType(I8, QK)), out, 2)
        return odd

    def _min_max(self, v: _Values) -> tuple[ir.Value, ir.Value]:
        return _vreduce(self.b, "fmax", v.xs, NNAN_NSZ), _vreduce(self.b, "fmin", v.xs, NNAN_NSZ)

    def symmetric(self, v: _Values, out: ir.Value) -> ir.Value:
        """Q4_0 / Q5_0."""
        b = self.b
        five = self.dst is DType.Q5_0
        half_range = 16 if five else 8
        mx, mn = self._min_max(v)
        neg_mn = b.fneg(mn)
        gt = b.fcmp_ordered(">", mx, neg_mn)
        lt = b.fcmp_ordered(">", neg_mn, mx)
        ext = Var(b, b.select(gt, mx, mn), "ext")
        with b.if_then(b.not_(b.or_(gt, lt)), likely=False):
            # equal magnitudes (or an all-zero block): the first value of largest magnitude decides
            amax = _fabs(b, mx)
            amax_v = splat(b, amax)
            hits = _mask32(b, [b.fcmp_ordered("==", _fabs(b, x), amax_v) for x in v.xs])
            neg = _mask32(b, [b.icmp_signed("<", w, splat_const(V8I32, 0)) for w in v.bits])
            first = b.call(intrinsic(b.module, "llvm.cttz.i32", I32, [I32, I1]), [hits, ir.Constant(I1, 0)])
            negative = b.trunc(b.lshr(neg, first), I1)
            ext.set(b.select(negative, b.fneg(amax), amax))
        d = b.fdiv(ext.get(), ir.Constant(F32, -float(half_range)))
        inv = _inverse(b, d)
        odd = _is_inf(b, inv)
        inv_v = splat(b, b.select(odd, ir.Constant(F32, 0.0), inv))
        offset = splat_const(V8F, half_range + 0.5)
        top = splat_const(V8I32, 2 * half_range - 1)
        smin = intrinsic(b.module, "llvm.smin.v8i32", V8I32, [V8I32, V8I32])
        codes = [b.call(smin, [b.fptosi(b.fadd(b.fmul(x, inv_v), offset), V8I32), top]) for x in v.xs]
        _store(b, self.half(d), out, 0)
        _store_codes(b, codes, out, 6 if five else 2, 2 if five else None)
        return odd

    def affine(self, v: _Values, out: ir.Value) -> ir.Value:
        """Q4_1 / Q5_1."""
        b = self.b
        five = self.dst is DType.Q5_1
        top_code = 31 if five else 15
        mx0, mn0 = self._min_max(v)
        zero = ir.Constant(F32, 0.0)
        mx, mn = Var(b, mx0, "mx"), Var(b, mn0, "mn")
        mixed_zeros = Var(b, ir.Constant(I1, 0), "mixed")
        mx_zero = b.fcmp_ordered("==", mx0, zero)
        mn_zero = b.fcmp_ordered("==", mn0, zero)
        with b.if_then(b.or_(mx_zero, mn_zero), likely=False):
            # an extreme is a zero: its sign is the sign of the zeros in the block, if they agree
            pos = _any(b, [b.icmp_unsigned("==", w, splat_const(V8I32, 0)) for w in v.bits])
            neg = _any(b, [b.icmp_unsigned("==", w, splat_const(V8I32, _SIGN)) for w in v.bits])
            signed_zero = b.select(neg, ir.Constant(F32, -0.0), zero)
            mx.set(b.select(mx_zero, signed_zero, mx0))
            mn.set(b.select(mn_zero, signed_zero, mn0))
            mixed_zeros.set(b.and_(pos, neg))
        mxv, mnv = mx.get(), mn.get()
        d = b.fdiv(b.fsub(mxv, mnv), ir.Constant(F32, float(top_code)))
        inv = _inverse(b, d)
        odd = b.or_(b.or_(_is_inf(b, d), _is_inf(b, inv)), mixed_zeros.get())
        inv_v = splat(b, b.select(odd, zero, inv))
        mn_v = splat(b, mnv)
        half = splat_const(V8F, 0.5)
        top = splat_const(V8I32, top_code)
        smin = intrinsic(b.module, "llvm.smin.v8i32", V8I32, [V8I32, V8I32])
        codes = [b.call(smin, [b.fptosi(b.fadd(b.fmul(b.fsub(x, mn_v), inv_v), half), V8I32), top]) for x in v.xs]
        _store(b, self.half(d), out, 0)
        _store(b, self.half(mnv), out, 2)
        _store_codes(b, codes, out, 8 if five else 4, 4 if five else None)
        return odd

    # float targets: value by value (32 at a time, then a scalar tail)

    def floats(self) -> None:
        b = self.b
        total = b.mul(self.n_rows, self.n_cols)
        main = b.and_(total, ir.Constant(I64, -QK))
        out_bytes = self.dst.block_bytes
        with counted_loop(b, 0, main, QK, name="i") as i:
            v = _load_block(b, self.src, byte_ptr(b, self.src_p, b.mul(i, ir.Constant(I64, self.value_bytes))),
                            self.native)
            masks = _nonfinite_masks(b, v)
            with b.if_then(_any(b, masks), likely=False):
                first = b.call(intrinsic(b.module, "llvm.cttz.i32", I32, [I32, I1]),
                               [_mask32(b, masks), ir.Constant(I1, 0)])
                self.finish(b.sdiv(b.add(i, b.zext(first, I64)), self.n_cols))
            out = byte_ptr(b, self.dst_p, b.mul(i, ir.Constant(I64, out_bytes)))
            for k, x in enumerate(v.xs):
                _store(b, x if self.dst is DType.F32 else self.half(x), out, k * VL * out_bytes)
        with counted_loop(b, main, total, name="t") as i:
            x = _load_scalar(b, self.src, byte_ptr(b, self.src_p, b.mul(i, ir.Constant(I64, self.value_bytes))),
                             self.native)
            exp = ir.Constant(I32, _EXP)
            with b.if_then(b.icmp_unsigned("==", b.and_(b.bitcast(x, I32), exp), exp), likely=False):
                self.finish(b.sdiv(i, self.n_cols))
            out = byte_ptr(b, self.dst_p, b.mul(i, ir.Constant(I64, out_bytes)))
            _store(b, x if self.dst is DType.F32 else self.half(x), out, 0)
        self.finish(ir.Constant(I64, -1))


def emit_quantize(module: ir.Module, src: DType, dst: DType, native: bool | None = None) -> ir.Function:
    """Define the kernel for (`src`, `dst`) in `module` (external linkage). `native` chooses the half
    conversions (default: whatever the host target supports)."""
    check_pair(src, dst)
    use_native = native_half() if native is None else native

    def build(fn: ir.Function) -> None:
        e = _Emitter(fn, src, dst, use_native)
        if dst.is_quantized:
            e.blocks()
        else:
            e.floats()

    return get_or_define(module, kernel_name(src, dst), QUANTIZE_TYPE, build, linkage="external")
