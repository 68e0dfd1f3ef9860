"""Throughput of runtime.quant.codec and runtime.quant.native per type, 1 and 2 threads, against gguf.quants.

    python bench/quantize.py [--values 64M] [--chunk 8M] [--repeat 3] [--native-only]
    python bench/quantize.py --types q2_k,q3_k,q4_k,q5_k,q6_k --values 8M --chunk 1M --repeat 2

The K-quants (runtime.quant.kquants, numpy only) are measured when named with --types; gguf.quants
cannot encode them, so only its decoding is compared.

Prints M values/s (best of --repeat) for our codec on one thread and on a 2-thread pool over chunks (as
conversion uses it), and gguf.quants' single-threaded figures with the ratio ours / gguf. Then the native
quantizer: the kernel alone on a piece of source that stays in cache, then streaming as conversion
feeds it (each --piece of stored bf16 or f32 bytes copied into a small buffer, then encoded; the ratio
is this against codec.py), on 1 and 2 threads, against codec.py on bf16 rows (decode to float32 +
quantize, the numpy path's per-value work).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.quant.codec import float32_to_bf16, quantize, to_float32
from runtime.quant.native import RowEncoder
from runtime.quant.types import DType

TYPES: tuple[DType, ...] = (DType.Q8_0, DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.F16, DType.BF16)
COLS = 4096


def _count(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


Fn = Callable[[np.ndarray], object]


def _chunked(fn: Fn, data: np.ndarray, rows: int, pool: ThreadPoolExecutor | None) -> list[object]:
    parts = [data[i : i + rows] for i in range(0, data.shape[0], rows)]
    if pool is None:
        return [fn(p) for p in parts]
    return list(pool.map(fn, parts))


def _rate(fn: Fn, data: np.ndarray, rows: int, pool: ThreadPoolExecutor | None, repeat: int, n: int) -> float:
    """M values/s of `fn` over `data` cut in chunks of `rows` rows (on `pool`, or inline if None)."""
    return n / _best(lambda: _chunked(fn, data, rows, pool), repeat) / 1e6


def _one_type(t: DType, x: np.ndarray, rows: int, pool: ThreadPoolExecutor, repeat: int, gguf: bool) -> str:
    n = x.size
    q1 = _rate(lambda a: quantize(a, t), x, rows, None, repeat, n)
    q2 = _rate(lambda a: quantize(a, t), x, rows, pool, repeat, n)
    raw = quantize(x, t)
    d1 = _rate(lambda a: to_float32(a, t), raw, rows, None, repeat, n)
    d2 = _rate(lambda a: to_float32(a, t), raw, rows, pool, repeat, n)
    gq = gd = float("nan")
    if gguf:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize as g_dequantize
        from gguf.quants import quantize as g_quantize

        gt = GGMLQuantizationType(int(t))
        graw = raw if t is DType.F16 else raw.view(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(NotImplementedError):  # the K-quants: gguf cannot encode them
                gq = _rate(lambda a: g_quantize(a, gt), x, rows, None, 1, n)
            gd = _rate(lambda a: g_dequantize(a, gt), graw, rows, None, 1, n)
    return (
        f"{t.name:6} {q1:9.0f} {q2:9.0f} {gq:8.0f} {q1 / gq:6.1f} | "
        f"{d1:8.0f} {d2:8.0f} {gd:8.0f} {d1 / gd:6.1f}"
    )


NATIVE_TYPES: tuple[DType, ...] = (DType.Q8_0, DType.Q5_1, DType.Q5_0, DType.Q4_1, DType.Q4_0, DType.F16, DType.F32)


def _native_chunk(raw: np.ndarray, src: DType, t: DType, piece_bytes: int) -> np.ndarray:
    """One chunk of stored rows encoded as convert does it: each piece of `piece_bytes` is copied
    into a small buffer that stays in cache (convert reads it there from the file), then encoded."""
    enc = RowEncoder(src, t, COLS)
    rows = max(1, piece_bytes // enc.row_in)
    buf = np.empty(rows * enc.row_in, np.uint8)
    flat = raw.reshape(-1).view(np.uint8)
    out = np.empty(raw.shape[0] * enc.row_out, np.uint8)
    buf_addr, dst_addr = buf.ctypes.data, out.ctypes.data
    for s in range(0, raw.shape[0], rows):
        n = min(rows, raw.shape[0] - s)
        np.copyto(buf[: n * enc.row_in], flat[s * enc.row_in : (s + n) * enc.row_in])
        enc.encode_at(buf_addr, n, dst_addr + s * enc.row_out)
    return out


def _native_cached(raw: np.ndarray, src: DType, t: DType, piece_bytes: int, n: int, repeat: int) -> float:
    """M values/s of the kernel alone: one piece that stays in cache, encoded over and over."""
    enc = RowEncoder(src, t, COLS)
    rows = max(1, piece_bytes // enc.row_in)
    piece = np.ascontiguousarray(raw[:rows])
    out = np.empty(rows * enc.row_out, np.uint8)
    a, b = piece.ctypes.data, out.ctypes.data
    calls = max(1, n // (rows * COLS))

    def run() -> None:
        for _ in range(calls):
            enc.encode_at(a, rows, b)

    return calls * rows * COLS / _best(run, repeat) / 1e6


def _native_row(t: DType, x: np.ndarray, rows: int, pool: ThreadPoolExecutor, repeat: int, piece: int) -> str:
    n = x.size
    bf16 = float32_to_bf16(x)
    c1 = _rate(lambda a: quantize(to_float32(a, DType.BF16), t), bf16, rows, None, repeat, n)
    k1 = _native_cached(bf16, DType.BF16, t, piece, n, repeat)
    b1 = _rate(lambda a: _native_chunk(a, DType.BF16, t, piece), bf16, rows, None, repeat, n)
    f1 = _rate(lambda a: _native_chunk(a, DType.F32, t, piece), x, rows, None, repeat, n)
    b2 = _rate(lambda a: _native_chunk(a, DType.BF16, t, piece), bf16, rows, pool, repeat, n)
    return (f"{t.name:6} {c1:9.0f} | {k1:9.0f} {1e3 / k1:7.2f} | {b1:9.0f} {f1:9.0f} {b2:9.0f} "
            f"{b1 / c1:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", default="64M", help="values pushed through each call (default 64M)")
    ap.add_argument("--chunk", default="8M", help="values per chunk handed to a thread (default 8M)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-gguf", action="store_true", help="skip the gguf.quants comparison")
    ap.add_argument("--types", default="", help="comma-separated subset, e.g. q5_1,q8_0")
    ap.add_argument("--piece", default="256K", help="source bytes per native call (default 256K, as convert)")
    ap.add_argument("--native-only", action="store_true", help="only the native quantizer table")
    args = ap.parse_args()
    types = [DType.parse(t) for t in args.types.split(",")] if args.types else TYPES
    n_rows = _count(args.values) // COLS
    rows = max(1, _count(args.chunk) // COLS)
    n = n_rows * COLS
    x = np.random.default_rng(0).standard_normal((n_rows, COLS), dtype=np.float32) * np.float32(0.02)
    print(f"{n / 1e6:.0f}M values ({n_rows} rows of {COLS}), chunks of {rows * COLS / 1e6:.1f}M; M values/s")
    with ThreadPoolExecutor(2) as pool:
        if not args.native_only:
            head = f"{'type':6} {'quant 1T':>9} {'quant 2T':>9} {'gguf q':>8} {'ratio':>6} | "
            head += f"{'deq 1T':>8} {'deq 2T':>8} {'gguf dq':>8} {'ratio':>6}"
            print(head)
            for t in types:
                print(_one_type(t, x, rows, pool, args.repeat, not args.no_gguf), flush=True)
        print(f"\nnative quantizer, pieces of {_count(args.piece) >> 10} KiB of source; M values/s. codec: bf16 "
              "rows decoded and quantized by codec.py; cached: the kernel on one piece in cache (bf16 in);\n"
              "stream: pieces copied from the big array into a small buffer, then encoded (as convert does)")
        print(f"{'type':6} {'codec 1T':>9} | {'cached 1T':>9} {'ns/val':>7} | {'bf16 1T':>9} {'f32 1T':>9} "
              f"{'bf16 2T':>9} {'ratio':>6}")
        for t in [t for t in types if t in NATIVE_TYPES] if args.types else NATIVE_TYPES:
            print(_native_row(t, x, rows, pool, args.repeat, _count(args.piece)), flush=True)


if __name__ == "__main__":
    main()
