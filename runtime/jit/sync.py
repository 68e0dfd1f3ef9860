"""IR emitters for thread synchronisation: the CPU pause hint, spin-waits, futex calls and a barrier.

Everything here emits into a caller's `ir.Module`, so the model's forward function can meet its
sibling threads at a barrier without leaving native code:

    barrier = emit_barrier(module)            # void barrier_wait(i8* barrier, i64 n_threads)
    b.call(barrier, [barrier_ptr, n_threads])

The barrier is BARRIER_BYTES of memory aligned to BARRIER_ALIGN; all-zero bytes are a valid initial
state (`new_barrier()` gives such a block). It counts arrivals in one 64-bit word and publishes
completion by bumping a generation word on another cache line: arrival is an acq_rel add, the last
thread resets the count and bumps the generation with release order, the others spin on an acquire
load of the generation. So every write made before `barrier_wait` by any thread is visible to every
thread after it. Waiters spin with a pause hint for BARRIER_SPIN rounds, then call `sched_yield`
between checks, so more threads than cores still make progress.

`emit_warm_barrier` is the same barrier on the same memory, but a thread that arrives early first
prefetches the data it reads next (up to WARM_MAX_LINES cache lines, one per look at the generation),
then waits as above.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from llvmlite import ir

from runtime.jit.irkit import I8P, I32, I64, VOID, get_or_define, i64, intrinsic
from runtime.jit.kernels.irhelpers import prefetch
from runtime.jit.target import host_target

BARRIER_BYTES = 128  # count at byte 0, generation at byte 64: separate cache lines
BARRIER_ALIGN = 64
BARRIER_SPIN = 256  # pause rounds before a waiter starts yielding its core (µs or less)
BARRIER_NAME = "barrier_wait"

_FUTEX_SYSCALL = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98}
FUTEX_WAIT_PRIVATE = 128  # FUTEX_WAIT | FUTEX_PRIVATE_FLAG
FUTEX_WAKE_PRIVATE = 129  # FUTEX_WAKE | FUTEX_PRIVATE_FLAG
_INT_MAX = 2**31 - 1


def _arch() -> str:
    return host_target().triple.split("-", 1)[0].lower()


def futex_syscall_number() -> int | None:
    """SYS_futex for the target, or None where futexes are not used (not Linux, unknown CPU)."""
    if "linux" not in host_target().triple:
        return None
    return _FUTEX_SYSCALL.get(_arch())


def emit_pause(b: ir.IRBuilder) -> None:
    """A spin-loop hint: `pause` on x86, `yield` on arm64, nothing elsewhere. Intrinsics, not inline
    assembly, so code for another machine compiles without that machine's assembler; the loops around
    it re-load atomics each round, so no compiler fence is needed."""
    arch = _arch()
    if arch in ("x86_64", "amd64", "i386", "i686"):
        b.call(intrinsic(b.module, "llvm.x86.sse2.pause", VOID, []), [])
    elif arch in ("aarch64", "arm64"):
        b.call(intrinsic(b.module, "llvm.aarch64.hint", VOID, [I32]), [ir.Constant(I32, 1)])  # 1: YIELD


def declare_sched_yield(module: ir.Module) -> ir.Function:
    return intrinsic(module, "sched_yield", I32, [])


def _syscall(module: ir.Module) -> ir.Function:
    existing = module.globals.get("syscall")
    if existing is not None:
        return existing
    return ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), "syscall")


def emit_futex_wait(b: ir.IRBuilder, module: ir.Module, word: ir.Value, expected: ir.Value) -> None:
    """Linux only: sleep while the i32 at `word` equals `expected` (returns early on any wake/signal)."""
    nr = futex_syscall_number()
    assert nr is not None, "futex is Linux-only"
    addr = b.ptrtoint(word, I64)
    val = b.zext(expected, I64) if expected.type != I64 else expected
    b.call(_syscall(module), [i64(nr), addr, i64(FUTEX_WAIT_PRIVATE), val, i64(0), i64(0), i64(0)])


def emit_futex_wake_all(b: ir.IRBuilder, module: ir.Module, word: ir.Value) -> None:
    """Linux only: wake every thread sleeping on the i32 at `word`."""
    nr = futex_syscall_number()
    assert nr is not None, "futex is Linux-only"
    addr = b.ptrtoint(word, I64)
    b.call(_syscall(module), [i64(nr), addr, i64(FUTEX_WAKE_PRIVATE), i64(_INT_MAX)])


def emit_spin_until(
    b: ir.IRBuilder, module: ir.Module, check: Callable[[ir.IRBuilder], tuple[ir.Value, ir.Value]],
    spin: int, name: str,
) -> ir.Value:
    """Loop until `check(b)` (emitted fresh in each round, returns (i1 ok, value)) is true.

    The first `spin` rounds only pause; later rounds call `sched_yield` too, so a waiter gives its
    core to the thread it waits for when there are more threads than cores. Returns the value that
    `check` produced in the round that succeeded.
    """
    pre = b.block
    head = b.append_basic_block(f"{name}.check")
    body = b.append_basic_block(f"{name}.pause")
    slow = b.append_basic_block(f"{name}.yield")
    cont = b.append_basic_block(f"{name}.next")
    done = b.append_basic_block(f"{name}.done")
    b.branch(head)
    b.position_at_end(head)
    k = b.phi(I64, name=f"{name}.k")
    k.add_incoming(i64(0), pre)
    ok, value = check(b)
    b.cbranch(ok, done, body)
    b.position_at_end(body)
    emit_pause(b)
    b.cbranch(b.icmp_unsigned("<", k, i64(spin)), cont, slow)
    b.position_at_end(slow)
    b.call(declare_sched_yield(module), [])
    b.branch(cont)
    b.position_at_end(cont)
    k.add_incoming(b.add(k, i64(1)), cont)
    b.branch(head)
    b.position_at_end(done)
    return value


def i64_field(b: ir.IRBuilder, base: ir.Value, byte_offset: int, ty: ir.IntType = I64) -> ir.Value:
    """Pointer to the integer of type `ty` at `base + byte_offset` (`base` is an i8*)."""
    p = b.gep(base, [i64(byte_offset)], inbounds=True)
    return b.bitcast(p, ty.as_pointer())


def _arrive(b: ir.IRBuilder, bar: ir.Value, n: ir.Value) -> Callable[[ir.IRBuilder], tuple[ir.Value, ir.Value]]:
    """Count this thread in at the barrier `bar` of `n` threads. The last to arrive resets the count, bumps
    the generation and returns from the function; the others go on, and get `changed(b)`: the (i1, value)
    check for emit_spin_until, whether the generation moved on since they arrived."""
    count = i64_field(b, bar, 0)
    gen = i64_field(b, bar, 64)
    # read the generation *before* arriving: once we arrive, the last thread may bump it
    seen = b.load_atomic(gen, "acquire", 8)
    arrived = b.atomic_rmw("add", count, i64(1), "acq_rel")
    with b.if_then(b.icmp_unsigned("==", arrived, b.sub(n, i64(1)))):
        # nobody touches the count again until they see the new generation (ordered by the release
        # below), so a plain reset is enough
        b.store_atomic(i64(0), count, "monotonic", 8)
        b.atomic_rmw("add", gen, i64(1), "release")
        b.ret_void()

    def changed(bb: ir.IRBuilder) -> tuple[ir.Value, ir.Value]:
        cur = bb.load_atomic(gen, "acquire", 8)
        return bb.icmp_unsigned("!=", cur, seen), cur

    return changed


def emit_barrier(module: ir.Module, linkage: str = "internal") -> ir.Function:
    """`void barrier_wait(i8* barrier, i64 n_threads)`, defined once per module.

    Every one of the `n_threads` threads must call it with the same `n_threads` and barrier memory
    (BARRIER_BYTES, BARRIER_ALIGN-aligned, zeroed once before first use and never touched after).
    n_threads <= 1 returns at once.
    """

    def build(fn: ir.Function) -> None:
        bar, n = fn.args
        bar.name, n.name = "barrier", "n_threads"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with b.if_then(b.icmp_signed("<=", n, i64(1)), likely=False):
            b.ret_void()
        changed = _arrive(b, bar, n)
        emit_spin_until(b, module, changed, BARRIER_SPIN, "bar")
        b.ret_void()

    return get_or_define(module, BARRIER_NAME, ir.FunctionType(VOID, [I8P, I64]), build, linkage)


WARM_BARRIER_NAME = "barrier_wait_warm"
# the most lines one wait prefetches, whatever it is asked: a waiter that prefetches does not pause or yield,
# so this bounds how long it may keep a core another thread needs (a few µs at memory speed)
WARM_MAX_LINES = 4096


def emit_warm_barrier(module: ir.Module, linkage: str = "internal") -> ir.Function:
    """`void barrier_wait_warm(i8* barrier, i64 n_threads, i8* base, i64 stride, i64 streams, i64 lines)`:
    barrier_wait (the same memory, and the two may be mixed on it), but a thread that arrives before the
    others spends the wait prefetching, into L2, what it reads next: `lines` cache lines dealt round-robin
    to `streams` runs `stride` bytes apart from `base` (line k at base + (k mod streams)·stride + 64·(k div
    streams)), one line per look at the generation, then it pauses as barrier_wait does. `lines` is capped at
    WARM_MAX_LINES and `streams` taken as at least 1. Prefetches never fault, so the addresses need not be
    mapped. The bandwidth a waiting thread would leave idle goes to the start of its next product."""

    def build(fn: ir.Function) -> None:
        bar, n, base, stride, streams, lines = fn.args
        for arg, name in zip(fn.args, ("barrier", "n_threads", "base", "stride", "streams", "lines"), strict=True):
            arg.name = name
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        with b.if_then(b.icmp_signed("<=", n, i64(1)), likely=False):
            b.ret_void()
        changed = _arrive(b, bar, n)
        streams = b.select(b.icmp_signed("<", streams, i64(1)), i64(1), streams)
        lines = b.select(b.icmp_signed(">", lines, i64(WARM_MAX_LINES)), i64(WARM_MAX_LINES), lines)
        pre = b.block
        head = b.append_basic_block("warm.check")
        more = b.append_basic_block("warm.more")
        fetch = b.append_basic_block("warm.fetch")
        spin = b.append_basic_block("warm.spin")
        done = b.append_basic_block("warm.done")
        b.branch(head)
        b.position_at_end(head)
        k = b.phi(I64, name="k")
        k.add_incoming(i64(0), pre)
        moved_on, _ = changed(b)
        b.cbranch(moved_on, done, more)
        b.position_at_end(more)
        b.cbranch(b.icmp_signed("<", k, lines), fetch, spin)
        b.position_at_end(fetch)
        offset = b.add(b.mul(b.urem(k, streams), stride), b.mul(b.udiv(k, streams), i64(64)))
        prefetch(b, b.gep(base, [offset]), locality=2)
        k.add_incoming(b.add(k, i64(1)), fetch)
        b.branch(head)
        b.position_at_end(spin)
        emit_spin_until(b, module, changed, BARRIER_SPIN, "bar")
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()

    return get_or_define(module, WARM_BARRIER_NAME, ir.FunctionType(VOID, [I8P, I64, I8P, I64, I64, I64]), build,
                         linkage)


class AlignedBuffer:
    """Zeroed memory at an aligned address, owned by this object (keep it alive while in use)."""

    def __init__(self, nbytes: int, align: int = 64) -> None:
        if align <= 0 or align & (align - 1):
            raise ValueError(f"alignment must be a power of two, got {align}")
        self.nbytes = nbytes
        self._raw = (ctypes.c_char * (nbytes + align))()
        base = ctypes.addressof(self._raw)
        self.address = base + (-base % align)

    def int64(self, byte_offset: int) -> ctypes.c_int64:
        """A ctypes view of the int64 at `byte_offset` (reads and writes go to the buffer)."""
        if not 0 <= byte_offset <= self.nbytes - 8:
            raise IndexError(byte_offset)
        return ctypes.c_int64.from_address(self.address + byte_offset)

    def zero(self) -> None:
        ctypes.memset(self.address, 0, self.nbytes)


def new_barrier() -> AlignedBuffer:
    """Barrier memory in its initial (all-zero) state; pass `.address` as the `i8* barrier`."""
    return AlignedBuffer(BARRIER_BYTES, BARRIER_ALIGN)
