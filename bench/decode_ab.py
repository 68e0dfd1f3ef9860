"""Decode ms/token of one model under several kernel switch settings, interleaved (A B A B …) in one process.

    python bench/decode_ab.py MODEL [--threads 2] [--rounds 5] [--steps 16] VARIANT [VARIANT ...]

VARIANT is a label, optionally with kernel switches (bench/kernel_costs.SWITCHES) set before its copy
of the model is built: `now`, `cvt:F16_BY_SHIFTS=0`, `words:Q8_BYTES=0`, `seq:FLOAT_ROWS=1,PREFETCH_BYTES=0`.
Each variant loads the model once (its own compiled kernels; the file is mapped once per variant), then
every round times `--steps` decode steps of each variant in turn; best and median per variant, and the
speed against the first. For the choices made per CPU family on a machine of that family, e.g. on Zen 4:

    python bench/decode_ab.py model-f16.bin now cvt:F16_BY_SHIFTS=0
    python bench/decode_ab.py model-q8_0.bin now words:Q8_BYTES=0

Prints the CPU and the load average with the figures: on a shared machine they mean something only
against each other.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.kernel_costs import SWITCHES
from runtime.model.model import Model, load_model


@dataclass
class Variant:
    label: str
    switches: dict[str, int] = field(default_factory=dict)


def parse_variant(spec: str) -> Variant:
    """`label` or `label:NAME=INT,NAME=INT` with NAME one of kernel_costs.SWITCHES (ValueError otherwise)."""
    label, _, rest = spec.partition(":")
    if not label:
        raise ValueError(f"{spec!r}: a variant needs a label before its switches")
    switches = {}
    for item in filter(None, rest.split(",")):
        name, eq, value = item.partition("=")
        if not eq or name not in SWITCHES:
            raise ValueError(f"{item!r}: expected NAME=INT with NAME one of {', '.join(sorted(SWITCHES))}")
        switches[name] = int(value)
    return Variant(label, switches)


@contextmanager
def switched(switches: dict[str, int]) -> Iterator[None]:
    """The kernel modules' switches set for the time being (they are read when kernels are built)."""
    saved = []
    for name, value in switches.items():
        module = importlib.import_module(f"runtime.jit.kernels.{SWITCHES[name]}")
        saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in reversed(saved):
            setattr(module, name, value)


def ms_per_token(model: Model, steps: int, state: object) -> tuple[float, object]:
    """Mean ms of `steps` decode steps from `state`, and the state after them."""
    start = time.perf_counter()
    for i in range(steps):
        _, state = model.forward([(i * 7919) % 250 + 10], state)
    return (time.perf_counter() - start) / steps * 1000, state


def run(path: str, variants: list[Variant], threads: int, rounds: int, steps: int) -> dict[str, list[float]]:
    """Per variant label, its ms/token in each round (variants timed in turn within a round)."""
    models = []
    for v in variants:
        with switched(v.switches):
            models.append(load_model(path, threads=threads))
    states = [m.forward([1])[1] for m in models]  # warm: first call, pages touched
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for _ in range(rounds):
        for i, (v, m) in enumerate(zip(variants, models, strict=True)):
            ms, states[i] = ms_per_token(m, steps, states[i])
            times[v.label].append(ms)
    return times


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("variants", nargs="+", help="label[:SWITCH=INT,...]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=16)
    args = ap.parse_args(argv)
    try:
        variants = [parse_variant(s) for s in args.variants]
    except ValueError as exc:
        ap.error(str(exc))
    if len({v.label for v in variants}) != len(variants):
        ap.error("variant labels must differ")
    times = run(args.model, variants, args.threads, args.rounds, args.steps)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{Path(args.model).name}: {args.threads} threads, {args.rounds} rounds of {args.steps} steps; "
          f"{cpu_name()}, load average {load}")
    first = min(times[variants[0].label])
    for v in variants:
        t = times[v.label]
        sw = ",".join(f"{k}={n}" for k, n in v.switches.items()) or "-"
        print(f"  {v.label:12s} {sw:36s} best {min(t):8.2f}  median {statistics.median(t):8.2f} ms/token  "
              f"speed {first / min(t):.2f}x")


if __name__ == "__main__":
    main()
