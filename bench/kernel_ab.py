"""One thread's matvec GB/s with the rows in L2 under several kernel-switch settings, interleaved.

    python bench/kernel_ab.py --types q2_k,q3_k,q4_k,q5_k,q6_k --cols 2048 --rounds 5 \
        before=SUM_SUBS=0 after=

Each variant is LABEL=SETTINGS, SETTINGS a comma-separated list of NAME=VALUE for the switches
bench/kernel_costs.py knows (SWITCHES) or module.NAME=VALUE (a constant of runtime.jit.kernels.module);
empty: the defaults. Every variant's kernels are compiled for this host first (the switches set while they
are built), then every round times each type under each variant in turn, rows in L2 (about 512 KiB of
one matrix called again and again, batches of passes in one native call: runtime/jit/kernels/walk.py,
the kernel out of line; until 2026-12-06 one Python call per pass, which read a few % lower), in CPU
time of the calling thread, so that a busy moment on a shared machine lands on all of them alike.
Printed per type and variant: the best and the median GB/s of weight bytes over the rounds, and the
best's ratio to the first variant's.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernel_costs import L2_BYTES, SWITCHES, switch_value
from bench.kernels import weight_bytes
from runtime.jit.engine import compile_module, prepare_module
from runtime.jit.kernels.walk import WALK_CTYPE, emit_walk, walk_name
from runtime.quant.types import DType


def parse_settings(text: str) -> dict[tuple[str, str], str]:
    """{(module, NAME): VALUE} from "NAME=VALUE,module.NAME=VALUE" (see the module docstring)."""
    out = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{item!r}: give NAME=VALUE")
        module, _, const = name.rpartition(".")
        module = module or SWITCHES.get(const, "")
        if not module:
            raise SystemExit(f"{name!r}: not one of {', '.join(SWITCHES)}; give module.NAME")
        out[(module, const)] = value
    return out


def build(types: list[DType], cols: int, settings: dict[tuple[str, str], str]) -> tuple[object, dict]:
    """The matvec kernels for `types` compiled with `settings` in force (restored afterwards)."""
    from llvmlite import ir

    saved = {}
    for (mod, name), value in settings.items():
        module = importlib.import_module(f"runtime.jit.kernels.{mod}")
        saved[(module, name)] = getattr(module, name)
        old = saved[(module, name)]
        setattr(module, name, switch_value(old, value))
    try:
        module = ir.Module(name="ab")
        prepare_module(module)
        for t in types:
            emit_walk(module, t, cols)
        compiled = compile_module(module, use_cache=False)
    finally:
        for (module, name), old in saved.items():
            setattr(module, name, old)
    fns = {t: WALK_CTYPE(compiled.address(walk_name(t, cols, False))) for t in types}
    return compiled, fns


def l2_gbs(walk: object, mat: np.ndarray, x: np.ndarray, y: np.ndarray, min_time: float) -> float:
    """Best GB/s of batches of passes of the kernel over `mat` (in L2), each batch one native call
    (runtime/jit/kernels/walk.py: no Python between passes), totalling `min_time` s of this thread's
    CPU time."""
    address = np.array([mat.ctypes.data], dtype=np.int64)
    passes, best, total = 20, float("inf"), 0.0
    while total < min_time:
        t0 = time.thread_time()
        walk(address.ctypes.data, 1, passes, x.ctypes.data, y.ctypes.data, 0, mat.shape[0])
        dt = time.thread_time() - t0
        best, total = min(best, dt), total + dt
    return mat.nbytes * passes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="LABEL=SETTINGS (see above)")
    ap.add_argument("--types", default="q2_k,q3_k,q4_k,q5_k,q6_k")
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--time", type=float, default=0.3, help="CPU seconds per measurement")
    ap.add_argument("--kib", type=int, default=L2_BYTES >> 10,
                    help=f"KiB of rows called again and again (default {L2_BYTES >> 10}: in L2)")
    args = ap.parse_args()
    types = [DType.parse(t) for t in args.types.split(",")]
    variants = {}
    for v in args.variants:
        label, _, settings = v.partition("=")
        variants[label] = build(types, args.cols, parse_settings(settings))
    rng = np.random.default_rng(0)
    data = {}
    for t in types:
        rows = max(4, (args.kib << 10) // t.row_bytes(args.cols) // 4 * 4)
        data[t] = (weight_bytes(t, rows, args.cols, rng), rng.normal(size=args.cols).astype(np.float32),
                   np.zeros(rows, np.float32))
    got: dict[tuple[DType, str], list[float]] = {}
    for _ in range(args.rounds):
        for t in types:
            for label, (_, fns) in variants.items():
                got.setdefault((t, label), []).append(l2_gbs(fns[t], *data[t], args.time))
    first = next(iter(variants))
    print(f"GB/s per thread, {args.kib} KiB of rows, {args.cols} columns, best / median of {args.rounds} rounds "
          "(CPU time)")
    for t in types:
        base = max(got[(t, first)])
        cells = [f"{label} {max(got[(t, label)]):5.1f} / {statistics.median(got[(t, label)]):5.1f}"
                 f" ({max(got[(t, label)]) / base:.2f}x)" for label in variants]
        print(f"{t.name:5}  " + "   ".join(cells))


if __name__ == "__main__":
    main()
