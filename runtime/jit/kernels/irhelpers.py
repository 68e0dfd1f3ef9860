"""Shared IR building blocks for the weight kernels: 8-lane vector types, loads, splats, FMA, sums, loops.

All weight kernels work on <8 x float> pieces (one AVX2 register; LLVM splits them in two on 128-bit
hosts), four of them per block of 32 weights. Loop-carried values (accumulators) live in allocas that
LLVM's SROA promotes to registers, which keeps the emitting code plain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llvmlite import ir

from runtime.jit.irkit import F16, F32, I8, I32, intrinsic
from runtime.jit.irkit import i64 as i64c
from runtime.jit.target import host_target

VL = 8  # float lanes per vector piece
PIECES = 4  # pieces per block of 32 values
BLOCK = VL * PIECES
V8F = ir.VectorType(F32, VL)
V8I32 = ir.VectorType(I32, VL)
DOT_FLAGS = ("reassoc", "contract")  # reassociating a dot product's additions is fine


def i32c(v: int) -> ir.Constant:
    return ir.Constant(I32, v)


def const_vec(ty: ir.VectorType, values: Sequence[int | float]) -> ir.Constant:
    """A constant vector of `ty` from Python numbers."""
    return ir.Constant(ty, [ir.Constant(ty.element, v) for v in values])


def splat_const(ty: ir.VectorType, value: int | float) -> ir.Constant:
    return const_vec(ty, [value] * ty.count)


def splat(b: ir.IRBuilder, value: ir.Value, count: int = VL) -> ir.Value:
    """Broadcast a scalar to every lane of a <count x T> vector."""
    ty = ir.VectorType(value.type, count)
    one = b.insert_element(ir.Constant(ty, ir.Undefined), value, i32c(0))
    return b.shuffle_vector(one, ir.Constant(ty, ir.Undefined), ir.Constant(ir.VectorType(I32, count), None))


def shuffle(b: ir.IRBuilder, a: ir.Value, c: ir.Value, lanes: Sequence[int]) -> ir.Value:
    """shufflevector with a constant lane list (indices ≥ len(a) pick from `c`)."""
    return b.shuffle_vector(a, c, const_vec(ir.VectorType(I32, len(lanes)), lanes))


def byte_ptr(b: ir.IRBuilder, base: ir.Value, offset: int | ir.Value) -> ir.Value:
    """`base + offset` bytes for an i8* base."""
    if isinstance(offset, int):
        return b.gep(base, [i64c(offset)], inbounds=True) if offset else base
    return b.gep(base, [offset], inbounds=True)


def load_as(b: ir.IRBuilder, base: ir.Value, offset: int | ir.Value, ty: ir.Type, align: int = 1) -> ir.Value:
    """Load a `ty` stored `offset` bytes after the i8* `base` (unaligned unless told)."""
    return b.load(b.bitcast(byte_ptr(b, base, offset), ty.as_pointer()), align=align)


def load_vec(b: ir.IRBuilder, fptr: ir.Value, index: int | ir.Value, align: int = 4,
             ty: ir.VectorType = V8F) -> ir.Value:
    """A float vector (<8 x float> unless `ty` says otherwise) from float* `fptr` at element `index`."""
    idx = i64c(index) if isinstance(index, int) else index
    p = b.gep(fptr, [idx], inbounds=True) if not (isinstance(index, int) and index == 0) else fptr
    return b.load(b.bitcast(p, ty.as_pointer()), align=align)


def row_at(b: ir.IRBuilder, w: ir.Value, row0: ir.Value, i: int | ir.Value, row_bytes: int) -> ir.Value:
    """i8* to row row0 + i of a matrix whose rows are `row_bytes` long, starting at the i8* `w`."""
    idx = i64c(i) if isinstance(i, int) else i
    return b.gep(w, [b.mul(b.add(row0, idx), i64c(row_bytes))], inbounds=True)


def store_results(b: ir.IRBuilder, y: ir.Value, first: ir.Value, values: Sequence[ir.Value],
                  accumulate: bool, stride: ir.Value | None = None) -> None:
    """y[first + i] = values[i] (or += with `accumulate`) for each i (y[first + i·stride] with `stride`)."""
    for i, s in enumerate(values):
        at = i64c(i) if stride is None else b.mul(i64c(i), stride)
        out = b.gep(y, [b.add(first, at)], inbounds=True)
        b.store(fadd(b, b.load(out), s) if accumulate else s, out)


def store_vec(b: ir.IRBuilder, value: ir.Value, fptr: ir.Value, index: int | ir.Value, align: int = 4) -> None:
    idx = i64c(index) if isinstance(index, int) else index
    b.store(value, b.bitcast(b.gep(fptr, [idx], inbounds=True), V8F.as_pointer()), align=align)


def fma_fn(module: ir.Module, ty: ir.Type) -> ir.Function:
    """llvm.fmuladd for `ty` (a fused FMA where the host has one, mul+add otherwise)."""
    suffix = f"v{ty.count}f32" if isinstance(ty, ir.VectorType) else "f32"
    return intrinsic(module, f"llvm.fmuladd.{suffix}", ty, [ty, ty, ty])


def fma(b: ir.IRBuilder, a: ir.Value, c: ir.Value, acc: ir.Value) -> ir.Value:
    """a·c + acc."""
    return b.call(fma_fn(b.module, a.type), [a, c, acc])


def hsum(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    """Horizontal sum of a float vector (any association order)."""
    fn = intrinsic(b.module, f"llvm.vector.reduce.fadd.v{v.type.count}f32", F32, [F32, v.type])
    return b.call(fn, [ir.Constant(F32, 0.0), v], fastmath=DOT_FLAGS)


def fadd(b: ir.IRBuilder, a: ir.Value, c: ir.Value) -> ir.Value:
    return b.fadd(a, c, flags=DOT_FLAGS)


def fmul(b: ir.IRBuilder, a: ir.Value, c: ir.Value) -> ir.Value:
    return b.fmul(a, c, flags=DOT_FLAGS)


def tree_reduce(values: Sequence[ir.Value], combine: Callable[[ir.Value, ir.Value], ir.Value]) -> ir.Value:
    """values combined pairwise (short dependency chains)."""
    vals = list(values)
    while len(vals) > 1:
        nxt = [combine(vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
        if len(vals) % 2:
            nxt.append(vals[-1])
        vals = nxt
    return vals[0]


def tree_sum(b: ir.IRBuilder, values: Sequence[ir.Value]) -> ir.Value:
    """Pairwise sum (short dependency chains)."""
    return tree_reduce(values, lambda p, q: fadd(b, p, q))


def dot_pieces(b: ir.IRBuilder, ws: Sequence[ir.Value], xs: Sequence[ir.Value]) -> ir.Value:
    """Σ ws[k]·xs[k] as one vector: two independent mul+FMA chains, then one add."""
    halves = []
    for lo in range(0, len(ws), 2):
        acc = fmul(b, ws[lo], xs[lo])
        for k in range(lo + 1, min(lo + 2, len(ws))):
            acc = fma(b, ws[k], xs[k], acc)
        halves.append(acc)
    return tree_sum(b, halves)


class Var:
    """A mutable local (an alloca promoted to a register by LLVM)."""

    def __init__(self, b: ir.IRBuilder, init: ir.Value, name: str = "") -> None:
        entry = b.function.entry_basic_block
        saved = b.block
        with b.goto_block(entry):
            if entry.instructions:
                b.position_before(entry.instructions[0])
            self.ptr = b.alloca(init.type, name=name)
        b.position_at_end(saved)
        self.b = b
        b.store(init, self.ptr)

    def get(self) -> ir.Value:
        return self.b.load(self.ptr)

    def set(self, value: ir.Value) -> None:
        self.b.store(value, self.ptr)


def stack_floats(b: ir.IRBuilder, count: int, align: int = 32, name: str = "") -> ir.Value:
    """A float* to `count` floats on the stack, allocated in the entry block."""
    return stack_array(b, F32, count, align, name)


def prefetch(b: ir.IRBuilder, ptr: ir.Value, locality: int = 3) -> None:
    """Read prefetch of the cache line at i8* `ptr` (locality 3: into all cache levels, x86 prefetcht0;
    2: prefetcht1, from L2 out; 1: prefetcht2; 0: non-temporal)."""
    i8p = I8.as_pointer()
    fn = b.module.globals.get("llvm.prefetch.p0")
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]), "llvm.prefetch.p0")
    b.call(fn, [ptr, i32c(0), i32c(locality), i32c(1)])


def native_half() -> bool:
    """Whether `fpext half` compiles to instructions here (x86 needs F16C; otherwise LLVM calls a
    runtime library function that JIT-compiled code cannot reach)."""
    host = host_target()
    return not host.is_x86 or "f16c" in host.enabled


def half_to_float(b: ir.IRBuilder, bits: ir.Value, native: bool | None = None) -> ir.Value:
    """IEEE half → float32 for an i16 or <n x i16> value of raw half bits (exact, incl. subnormals,
    infinities and NaN). Uses `fpext` where the host converts halves natively, integer code otherwise."""
    vec = isinstance(bits.type, ir.VectorType)
    n = bits.type.count if vec else 0
    half_ty = ir.VectorType(F16, n) if vec else F16
    float_ty = ir.VectorType(F32, n) if vec else F32
    if native_half() if native is None else native:
        return b.fpext(b.bitcast(bits, half_ty), float_ty)
    int_ty = ir.VectorType(I32, n) if vec else I32

    def c(v: int | float, ty: ir.Type = int_ty) -> ir.Constant:
        return splat_const(ty, v) if vec else ir.Constant(ty, v)

    h = b.zext(bits, int_ty)
    sign = b.shl(b.and_(h, c(0x8000)), c(16))
    em = b.and_(h, c(0x7FFF))
    # exponent and mantissa moved into float position, rescaled by 2^112 (also right for subnormals)
    mag = b.fmul(b.bitcast(b.shl(em, c(13)), float_ty), b.bitcast(c(0x77800000), float_ty))
    mag_bits = b.bitcast(mag, int_ty)
    special = b.icmp_unsigned(">=", em, c(0x7C00))  # infinity or NaN
    mag_bits = b.select(special, b.or_(b.shl(em, c(13)), c(0x7F800000)), mag_bits)
    return b.bitcast(b.or_(mag_bits, sign), float_ty)


def stack_array(b: ir.IRBuilder, ty: ir.Type, count: int, align: int = 32, name: str = "") -> ir.Value:
    """A `ty*` to `count` elements of `ty` on the stack, allocated in the entry block."""
    entry = b.function.entry_basic_block
    saved = b.block
    with b.goto_block(entry):
        if entry.instructions:
            b.position_before(entry.instructions[0])
        arr = b.alloca(ir.ArrayType(ty, count), name=name)
        arr.align = align
        ptr = b.gep(arr, [i32c(0), i32c(0)], inbounds=True)
    b.position_at_end(saved)
    return ptr
