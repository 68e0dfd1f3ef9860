"""Decoding speed of several variants side by side: files, kernel switches, parts left out, interleaved.

    python bench/decode_ab.py --threads 2 --rounds 12 q8_0=FILE_Q8 q5_1=FILE_Q51
    python bench/decode_ab.py --threads 2 --model FILE base= \
        'rows3=runtime.jit.kernels.matvec_int16.PREFETCH_TARGET=6528' \
        'groups2=runtime.jit.kernels.matvec_int16.PREFETCH_GROUPS=2'
    python bench/decode_ab.py --threads 1 --model FILE full= nomat=omit:matrices nolora=omit:matrices+lora

Each variant is LABEL=SETTINGS, SETTINGS a comma-separated list of `file:PATH`, `omit:PART+PART` (the
spec's bench-only parts: matrices, lora, heads; results are then wrong, only the time means something)
and `module.NAME=VALUE` (a module constant set while that variant is built, e.g. a kernel switch; the
compiled-code cache keys on such constants, so each variant gets its own code) or `NAME=VALUE` for the
kernel switches bench/kernel_costs.py knows (SWITCHES: F16_BY_SHIFTS, Q8_BYTES, FLOAT_ROWS, …), e.g. on
Zen 4: `--model M-f16.bin now= cvt=F16_BY_SHIFTS=0` or `--model M-q8_0.bin now= words=Q8_BYTES=0`. Every round measures
the compiled memory read (as `rwkv-tui bench` prints it) and then decodes --steps tokens with each
variant in turn, so a busy moment on a shared machine lands on all of them alike. Printed: median and
lower quartile ms/token per variant, the GB/s of weights read at the lower quartile and its share of
the median compiled read, and of the median compiled read over that variant's own pages of the file
(runtime.bench.weights_read_gbs, right before and right after the variant's steps in each round, the
better kept, as `rwkv-tui bench` does). One thread is timed in CPU time (what a part costs,
whatever else runs), more threads in wall time.

The pages a file sits in can matter as much as its type: on the 2-vCPU Sapphire Rapids VM the same bytes
decoded up to 34 % faster from a fresh copy (`cp`) than from the original file, both in the page cache
(1.5B RWKV-4 Q5_K_M, 1 thread: 125 against 82 ms/token; its Q5_1 98 against 84; the RWKV-7 files matched
their copies; why, unknown). Before reading a difference between files as the kernels', time each file
against its own fresh copy too (`orig=file:A copy=file:A_copy`), or compare copies made together. The
read over each variant's own pages follows such differences (slow pages read slowly too), so its share
is the figure to compare across files. Why the pages differ is mostly their size: a file `cp` (or any
write) put in the page cache is mapped in 4 KB pages, one read back from disk for the loader's mapping in
2 MB pages (runtime/pagecache.py; the share is printed per variant). --drop-cache drops each file's
cached pages first, so that copies are timed as a converted or downloaded file is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernel_costs import SWITCHES, switch_value
from runtime.bench import bytes_per_decoded_token, stream_read_gbs, weights_read_gbs
from runtime.jit.kernels.stream_read import STEP, stream_sum
from runtime.machine import cpu_name
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.pagecache import drop_cached_pages


def build_variant(settings: str, default_file: Path | None, threads: int) -> Model:
    """The model SETTINGS describe (see the module docstring), its constants set only while it is built."""
    path, omit, changed = default_file, frozenset(), []
    try:
        for item in filter(None, settings.split(",")):
            if item.startswith("file:"):
                path = Path(item[5:])
            elif item.startswith("omit:"):
                omit = frozenset(item[5:].split("+"))
            else:
                name, value = item.split("=", 1)
                if "." not in name and name in SWITCHES:
                    name = f"runtime.jit.kernels.{SWITCHES[name]}.{name}"
                module_name, attr = name.rsplit(".", 1)
                module = importlib.import_module(module_name)
                if not hasattr(module, attr):
                    raise SystemExit(f"{module_name} has no constant {attr}")
                changed.append((module, attr, getattr(module, attr)))
                setattr(module, attr, switch_value(getattr(module, attr), value))
        if path is None:
            raise SystemExit(f"no model file for variant '{settings}': give --model or file:PATH")
        weights = load_weights(path)
        if omit:  # only the specs with bench-only parts (RWKV-6/7) have the field
            if not hasattr(weights.spec, "omit"):
                weights.close()
                raise SystemExit(f"omit: needs an RWKV-6 or RWKV-7 file (the parts to leave out); {path} is not one")
            weights.spec = dataclasses.replace(weights.spec, omit=omit)
        return Model(weights, threads)
    finally:
        for module, attr, old in reversed(changed):
            setattr(module, attr, old)


def variant_files(variants: list[str], default_file: Path | None) -> set[Path]:
    """The model files LABEL=SETTINGS variants read (their `file:` items, else `default_file`)."""
    out = set()
    for text in variants:
        named = [Path(item[5:]) for item in text.partition("=")[2].split(",") if item.startswith("file:")]
        out.update(named or ([default_file] if default_file else []))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="LABEL=SETTINGS")
    ap.add_argument("--model", type=Path, help="the file of variants that name none")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4, help="decode steps per variant and round")
    ap.add_argument("--drop-cache", action="store_true",
                    help="drop each file's page cache first, so that it is read back from disk (in 2 MB pages "
                         "on Linux, as after convert or a download) rather than mapped from the pages `cp` wrote")
    args = ap.parse_args(argv)
    if args.drop_cache:
        for path in variant_files(args.variants, args.model):
            drop_cached_pages(path)
    models: dict[str, Model] = {}
    for text in args.variants:
        label, _, settings = text.partition("=")
        models[label] = build_variant(settings, args.model, args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    stream_sum(np.ones(STEP, np.float32))  # compiled once here, before any timing
    rng = np.random.default_rng(0)
    states = {label: m.forward(rng.integers(0, m.n_vocab, 4))[1] for label, m in models.items()}
    times: dict[str, list[float]] = {label: [] for label in models}
    reads = []
    own: dict[str, list[float]] = {label: [] for label in models}
    for _ in range(args.rounds):
        reads.append(stream_read_gbs(threads=args.threads))
        for label, m in models.items():
            before = weights_read_gbs(m, repeats=1)
            for tok in rng.integers(0, m.n_vocab, args.steps):
                t0 = clock()
                _, states[label] = m.forward([int(tok)], states[label])
                times[label].append(clock() - t0)
            own[label].append(max(before, weights_read_gbs(m, repeats=1)))
    read = float(np.median(reads))
    print(f"{platform.processor() or platform.machine()} ({cpu_name()}), load {os.getloadavg()[0]:.1f}")
    print(f"{args.threads} thread(s), {args.rounds} rounds x {args.steps} steps, "
          f"{'CPU' if args.threads == 1 else 'wall'} time; compiled read median {read:.1f} GB/s")
    for label, m in models.items():
        step_bytes = bytes_per_decoded_token(m)
        med, lq = (float(np.percentile(times[label], p)) * 1e3 for p in (50, 25))
        gbs = step_bytes / lq / 1e6
        pages = float(np.median(own[label]))
        huge = m.huge_page_share()
        print(f"  {label:14s} {m.path.name:28s} median {med:8.2f} ms  lower quartile {lq:8.2f} ms  "
              f"{gbs:5.1f} GB/s ({100 * gbs / read:.0f} % of the read; its own pages {pages:.1f} GB/s: "
              f"{100 * gbs / pages:.0f} %; {'?' if huge is None else f'{100 * huge:.0f} %'} in 2 MB pages)")
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
