"""Small helpers for writing LLVM IR with llvmlite's builder: types, pointer arithmetic, loops.

Kept deliberately plain: scalar code in simple counted loops, which LLVM's loop vectoriser turns
into SIMD for the host. Floating-point instructions that may be reassociated (reductions) are
tagged with fast-math flags through `fast`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from llvmlite import ir

F32 = ir.FloatType()
F16 = ir.HalfType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
VOID = ir.VoidType()
F32P = F32.as_pointer()
I8P = I8.as_pointer()
I32P = I32.as_pointer()
I64P = I64.as_pointer()

FAST = ("fast",)


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def f32(v: float) -> ir.Constant:
    return ir.Constant(F32, v)


def fast(instr: ir.Instruction, flags: tuple[str, ...] = FAST) -> ir.Instruction:
    """Tag a floating-point instruction with fast-math flags (allows reassociation, FMA contraction)."""
    instr.flags.extend(flags)
    return instr


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """Declare (once) an LLVM intrinsic or external function."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(ret, args), name)


def get_or_define(
    module: ir.Module, name: str, fnty: ir.FunctionType, build: Callable[[ir.Function], None],
    linkage: str = "internal",
) -> ir.Function:
    """The function `name` of `module`, defining it with `build(fn)` the first time."""
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, fnty, name)
    fn.linkage = linkage
    build(fn)
    return fn


def offset_ptr(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value) -> ir.Value:
    """`ptr + index` elements."""
    return b.gep(ptr, [index], inbounds=True)


def load_at(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value, align: int | None = None) -> ir.Value:
    return b.load(b.gep(ptr, [index], inbounds=True), align=align)


def store_at(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, index: ir.Value, align: int | None = None) -> None:
    b.store(value, b.gep(ptr, [index], inbounds=True), align=align)


@contextmanager
def counted_loop(b: ir.IRBuilder, start: ir.Value | int, stop: ir.Value | int, step: ir.Value | int = 1,
                 name: str = "i") -> Iterator[ir.Value]:
    """`for (i = start; i < stop; i += step)` over signed i64; the body is emitted inside the `with`."""
    start = i64(start) if isinstance(start, int) else start
    stop = i64(stop) if isinstance(stop, int) else stop
    step_v = i64(step) if isinstance(step, int) else step
    pre = b.block
    head = b.append_basic_block(f"{name}.head")
    body = b.append_basic_block(f"{name}.body")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", i, stop), body, done)
    b.position_at_end(body)
    yield i
    nxt = b.add(i, step_v, name=f"{name}.next")
    i.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(done)


@contextmanager
def if_then(b: ir.IRBuilder, cond: ir.Value) -> Iterator[None]:
    with b.if_then(cond):
        yield


def split_range(b: ir.IRBuilder, total: ir.Value | int, tid: ir.Value, n: ir.Value) -> tuple[ir.Value, ir.Value]:
    """Thread `tid`'s share [begin, end) of `total` items split evenly over `n` threads."""
    t = i64(total) if isinstance(total, int) else total
    begin = b.udiv(b.mul(t, tid), n)
    end = b.udiv(b.mul(t, b.add(tid, i64(1))), n)
    return begin, end
