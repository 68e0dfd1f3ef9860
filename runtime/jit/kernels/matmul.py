"""Matrix × matrix for a chunk of prompt tokens: Y[t·ldy + r] (+)= W[r] · X[t·ldx …] for t < n_tok.

    void matmul_<type>_c<n>[_acc](i8* noalias w, float* noalias X, i64 ldx, float* noalias Y, i64 ldy,
                                  i64 n_tok, i64 row_begin, i64 row_end)

Each weight block is read from memory once per call: a tile of up to 32 rows (tile_rows) is dequantized
to float32 into a stack buffer (F32 rows are used in place; K super-blocks 16 floats at a time on AVX-512F
hosts, dequant_lanes), then a register-blocked micro-kernel multiplies MICRO_ROWS rows ×
tokens_per_step() tokens at a time — that many accumulators of micro_lanes() floats,
each weight and activation load shared by several FMAs — and reduces each accumulator once. The
tokens of one step stay in cache while the micro-kernel walks the tile's row groups, so the
activations are streamed once per tile rather than once per 4 rows. The tokens after the last whole
step (2 or more of them) go through one micro-kernel as many tokens wide (LEFTOVER_IN_ONE), a single one
through the 1-token micro-kernel; leftover rows go through 4-row and 1-row tiles. The micro-kernels are
functions of their own, shared by every type's kernel of a row length (SHARED_MICRO).
"""

from __future__ import annotations

from llvmlite import ir

from runtime.jit.irkit import F32, F32P, I8P, I64, VOID, counted_loop, get_or_define
from runtime.jit.kernels.dequant import block_at, check_supported, dequantize_block
from runtime.jit.kernels.dequant_k import SUPER, dequantize_superblock, is_k_quant, superblock_at
from runtime.jit.kernels.irhelpers import (
    BLOCK,
    VL,
    Var,
    fma,
    hsum,
    i64c,
    load_vec,
    row_at,
    stack_floats,
    store_results,
)
from runtime.jit.kernels.matvec import kernel_name
from runtime.jit.target import host_target, l2_cache_bytes
from runtime.quant.types import DType

MICRO_ROWS = 4  # rows per micro-kernel step
WIDE_K_DEQUANT = True  # K super-blocks dequantized in 512-bit pieces on AVX-512F hosts (a switch for A/B runs)
# The tokens left over after whole steps (n_tok mod tokens_per_step()) go through one micro-kernel as wide as
# they are, each weight load shared by all of them, instead of one 1-token pass each (a switch for A/B runs;
# one leftover token still takes the 1-token pass). Sapphire Rapids, before → after, measured with the wide
# passes inlined in every row group: 1 thread, rows in L2, 256×1024 Q4_K, GFLOP/s: 40 tokens 88.9 → 96.9, 16
# tokens 69.7 → 79.3, 23 tokens 76.2 → 86.8; Q5_1 256×2048, 40 tokens 79.1 → 83.5; 40-token prompts, 2
# threads, interleaved, tokens/s: 0.4B RWKV-6 Q4_K 239.7 → 261.2, 1.5B RWKV-7 Q4_K_M 67.7 → 75.9. As built now
# (shared micro-kernels, SHARED_MICRO): 0.4B Q4_K 242.0 → 260.3, 1.5B Q4_K_M 65.8 → 71.6. The wider passes
# cost compile time once per model: 1.5B Q4_K_M with an empty kernel cache, interleaved, 2.8-3.1 s without
# them, 3.3-3.8 s with them (4.7-5.0 s when they were inlined in every type's kernel).
LEFTOVER_IN_ONE = True
# the micro-kernels as functions shared by every type's kernel of a row length (_micro_fn) instead of inlined
# in each (a switch for A/B runs). 1.5B RWKV-7 Q4_K_M loaded with an empty kernel cache, with the wider
# leftover passes for whole tiles only: 3.9-4.3 s inlined, 3.2 s shared; prompts read as fast (2 threads,
# interleaved, tokens/s, inlined → shared: 0.4B RWKV-6 Q4_K 40 tokens 267.0 → 265.8, 128 tokens 301.8 →
# 304.1; 1.5B Q4_K_M 40 tokens 72.2 → 71.6)
SHARED_MICRO = True
MATMUL_TYPE = ir.FunctionType(VOID, [I8P, F32P, I64, F32P, I64, I64, I64, I64])


def micro_lanes() -> int:
    """float lanes of the micro-kernel's vectors: 16 on AVX-512F hosts (prompt reading is bound by
    FMA throughput, not memory, and 512-bit FMAs double it where the CPU has two such units), else 8."""
    return 16 if "avx512f" in host_target().enabled else VL


def dequant_lanes() -> int:
    """float lanes per piece K super-blocks are dequantized in: 16 where the micro-kernel's are
    (WIDE_K_DEQUANT), else 8. 512-bit pieces halve the instructions per value, which show in prompt
    reading at chunks of 64 tokens or fewer (the tile is decoded once per chunk)."""
    return micro_lanes() if WIDE_K_DEQUANT else VL


def tokens_per_step() -> int:
    """Tokens per micro-kernel step: as many as the vector registers hold (16 with AVX2, 32 with
    AVX-512VL) next to MICRO_ROWS·tokens accumulators and the weight pieces."""
    return 6 if "avx512vl" in host_target().enabled else 3


def tile_rows(n_cols: int) -> int:
    """Rows dequantized per tile: up to 32, the tile taking at most a quarter of the L2 cache (it is
    reused for every token of the chunk while the activations stream past it). Measured on 1.5B
    Q8_0 with a 2 MiB L2, 256-token prompt: 16 rows 75 tok/s, 32 rows 82."""
    budget = max(64 << 10, l2_cache_bytes() // 4) // 4  # floats
    return max(MICRO_ROWS, min(32, budget // n_cols // MICRO_ROWS * MICRO_ROWS))


def _micro(b: ir.IRBuilder, n_cols: int, accumulate: bool, rows: list[ir.Value], x: ir.Value, ldx: ir.Value,
           y: ir.Value, ldy: ir.Value, row0: ir.Value, t0: ir.Value, n_tokens: int) -> None:
    """Y[t0 + j, row0 + i] (+)= rows[i] · X[t0 + j] for i < len(rows), j < n_tokens (rows: float*)."""
    xrows = [b.gep(x, [b.mul(b.add(t0, i64c(j)), ldx)], inbounds=True) for j in range(n_tokens)]
    lanes = micro_lanes()
    vec = ir.VectorType(F32, lanes)
    zero = ir.Constant(vec, None)
    accs = [[Var(b, zero, "acc") for _ in range(n_tokens)] for _ in rows]
    with counted_loop(b, 0, n_cols, lanes, name="c") as c:
        ws = [load_vec(b, r, c, ty=vec) for r in rows]
        for j, xr in enumerate(xrows):
            xv = load_vec(b, xr, c, ty=vec)
            for i, w in enumerate(ws):
                accs[i][j].set(fma(b, w, xv, accs[i][j].get()))
    for j in range(n_tokens):
        yrow = b.gep(y, [b.mul(b.add(t0, i64c(j)), ldy)], inbounds=True)
        store_results(b, yrow, row0, [hsum(b, accs[i][j].get()) for i in range(len(rows))], accumulate)


def _micro_fn(module: ir.Module, n_cols: int, accumulate: bool, n_rows: int, n_tokens: int) -> ir.Function:
    """_micro as a function of its own, `void (float* row_0 … row_{n_rows-1}, float* X, i64 ldx, float* Y,
    i64 ldy, i64 row0, i64 t0)`, defined once per module and shared by every type's kernel with rows of
    `n_cols` values (it works on float rows: a tile, or F32 rows in place), so that a model's module holds
    one copy of each instead of one per type (compile time)."""

    def build(fn: ir.Function) -> None:
        fn.attributes.add("noinline")
        *rows, x, ldx, y, ldy, row0, t0 = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        _micro(b, n_cols, accumulate, rows, x, ldx, y, ldy, row0, t0, n_tokens)
        b.ret_void()

    name = f"matmul_micro_c{n_cols}_r{n_rows}_t{n_tokens}{'_acc' if accumulate else ''}"
    fnty = ir.FunctionType(VOID, [F32P] * n_rows + [F32P, I64, F32P, I64, I64, I64])
    return get_or_define(module, name, fnty, build)


def _row_ptr(b: ir.IRBuilder, dtype: DType, n_cols: int, w: ir.Value, row0: ir.Value, i: ir.Value,
             buf: ir.Value) -> ir.Value:
    """float* to row row0 + i of the tile: in place for F32, else its dequantized copy in `buf`."""
    if dtype is DType.F32:
        return b.bitcast(row_at(b, w, row0, i, dtype.row_bytes(n_cols)), F32P)
    return b.gep(buf, [b.mul(i, i64c(n_cols))], inbounds=True)


def _dequantize_tile(b: ir.IRBuilder, dtype: DType, n_cols: int, w: ir.Value, row0: ir.Value, count: int,
                     buf: ir.Value) -> None:
    """Rows row0 … row0+count-1 decoded to float into `buf` (a loop over rows: the IR stays small)."""
    if dtype is DType.F32:
        return
    row_bytes = dtype.row_bytes(n_cols)
    with counted_loop(b, 0, count, name="dqrow") as i:
        src = row_at(b, w, row0, i, row_bytes)
        dst = _row_ptr(b, dtype, n_cols, w, row0, i, buf)
        if is_k_quant(dtype):
            lanes = dequant_lanes()
            unit, decode = SUPER, lambda k: dequantize_superblock(b, dtype, superblock_at(b, src, dtype, k), lanes)
        else:
            lanes = VL
            unit, decode = BLOCK, lambda k: dequantize_block(b, dtype, block_at(b, src, dtype, k))
        with counted_loop(b, 0, n_cols // unit, name="dq") as k:
            pieces = decode(k)
            base = b.mul(k, i64c(unit))
            for j, p in enumerate(pieces):  # aligned: the tile is 64-byte aligned, rows and units 128 B apart
                at = b.gep(dst, [b.add(base, i64c(lanes * j))], inbounds=True)
                b.store(p, b.bitcast(at, p.type.as_pointer()), align=4 * lanes)


def _row_group(b: ir.IRBuilder, dtype: DType, n_cols: int, accumulate: bool, args: tuple, row0: ir.Value,
               count: int, buf: ir.Value, step: int) -> None:
    """Rows row0 … row0+count-1: dequantize them once, then every token against them, MICRO_ROWS
    rows at a time (count is 1 or a multiple of MICRO_ROWS)."""
    w, x, ldx, y, ldy, n_tok = args
    _dequantize_tile(b, dtype, n_cols, w, row0, count, buf)
    per_group = min(count, MICRO_ROWS)
    rest = b.srem(n_tok, i64c(step))
    tok_main = b.sub(n_tok, rest)

    def groups(t: ir.Value, n: int) -> None:
        with counted_loop(b, 0, count, per_group, name="grp") as g:
            rows = [_row_ptr(b, dtype, n_cols, w, row0, b.add(g, i64c(j)), buf) for j in range(per_group)]
            if SHARED_MICRO:
                micro = _micro_fn(b.module, n_cols, accumulate, per_group, n)
                b.call(micro, [*rows, x, ldx, y, ldy, b.add(row0, g), t])
            else:
                _micro(b, n_cols, accumulate, rows, x, ldx, y, ldy, b.add(row0, g), t, n)

    with counted_loop(b, i64c(0), tok_main, step, name=f"tok{step}") as t:
        groups(t, step)
    one_from = tok_main
    if LEFTOVER_IN_ONE and count >= MICRO_ROWS:
        # 2 … step − 1 leftover tokens in one pass of a micro-kernel that many tokens wide (tiles and 4-row
        # groups; a single row, the rare rows left after those, keeps 1-token passes)
        for n in range(2, step):
            with b.if_then(b.icmp_signed("==", rest, i64c(n))):
                groups(tok_main, n)
        one_from = b.select(b.icmp_signed(">=", rest, i64c(2)), n_tok, tok_main)
    with counted_loop(b, one_from, n_tok, 1, name="tok1") as t:
        groups(t, 1)


def emit_matmul(
    module: ir.Module, dtype: DType, n_cols: int, *, accumulate: bool = False, linkage: str = "internal"
) -> ir.Function:
    """Define (once per module) the matrix × matrix kernel for rows of `n_cols` values of `dtype`."""
    check_supported(dtype, n_cols)
    step = tokens_per_step()

    def build(fn: ir.Function) -> None:
        w, x, ldx, y, ldy, n_tok, r0, r1 = fn.args
        for arg, name in zip(fn.args, ("w", "x", "ldx", "y", "ldy", "n_tok", "row_begin", "row_end"), strict=True):
            arg.name = name
        for p in (w, x, y):
            p.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        big = tile_rows(n_cols)
        buf = stack_floats(b, 1 if dtype is DType.F32 else big * n_cols, align=64, name="tile")
        r1c = b.select(b.icmp_signed("<", r1, r0), r0, r1)  # an empty range does nothing
        args = (w, x, ldx, y, ldy, n_tok)
        start = r0
        for size in dict.fromkeys((big, MICRO_ROWS, 1)):  # whole tiles, then groups of 4, then single rows
            end = b.sub(r1c, b.srem(b.sub(r1c, start), i64c(size))) if size > 1 else r1c
            with counted_loop(b, start, end, size, name=f"rows{size}") as r:
                _row_group(b, dtype, n_cols, accumulate, args, r, size, buf, step)
            start = end
        b.ret_void()

    return get_or_define(module, kernel_name("matmul", dtype, n_cols, accumulate), MATMUL_TYPE, build, linkage)
