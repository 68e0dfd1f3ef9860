"""`rwkv-tui bench MODEL`: decode/prompt speed, bandwidth, memory and load time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from tui.commands.options import BENCH_STEPS, thread_count
from tui.commands.output import console, err_console
from tui.units import human_bytes

if TYPE_CHECKING:  # runtime.bench loads numpy and the JIT: imported when the command runs
    from runtime.bench import BenchResult, ThreadResult


def cmd_bench(args: argparse.Namespace) -> int:
    from runtime.bench import PROMPT_CHUNKS, run_bench

    threads = [args.threads] if args.threads else None
    # Progress as plain lines, not a spinner: an animated status redraws from its own thread, and on a
    # 2-core machine that thread preempting one decode thread stalls the other at every barrier (3B
    # Q5_1 decoded at 96 ms/token under a spinner, 72 without, same run).
    r = run_bench(args.model, threads, steps=args.steps, report=lambda m: err_console.print(f"[dim]{m}…[/dim]"),
                  drop_cache=args.drop_cache)
    console.print(f"[bold]{r.path.name}[/bold]  {human_bytes(r.file_bytes)}")
    console.print(f"weights read per decoded token  {human_bytes(r.bytes_per_token)}")
    console.print(f"load: cold (compiling) {r.load_cold_s:.2f} s, warm (cached) {r.load_warm_s:.2f} s")
    if r.huge_page_share is not None:
        hint = "" if r.huge_page_share >= 0.5 else (
            "  (pages cached while the file was written are small; --drop-cache reads it back in 2 MB pages)")
        console.print(f"weights mapped with 2 MB pages  {100 * r.huge_page_share:.0f}%{hint}")
    for n in sorted(r.bandwidth_gbs):
        console.print(f"memory read, {n} thread{'s' if n > 1 else ''}: sum {r.bandwidth_gbs[n]:.1f} GB/s, "
                      f"best {r.stream_gbs[n]:.1f} GB/s, the model's own pages {r.weights_gbs[n]:.1f} GB/s")
    console.print("  (sum: how fast an ordinary program (a numpy sum over 1 GiB) reads memory here; best: a compiled "
                  "read that prefetches ahead like the decode kernels; own pages: that read over the very pages of "
                  "the file that decoding reads, which a VM may place on slower or faster memory than a fresh "
                  "buffer. Decoding reads every weight once per token, so the % columns say how close decoding "
                  "comes to each)")
    if r.type_bytes:
        total = sum(r.type_bytes.values())
        console.print("matrix types, share of the matrix bytes a decoded token reads: " +
                      ", ".join(f"{t} {100 * n / total:.0f}%" for t, n in r.type_bytes.items()))
    for n in sorted(r.kernel_gbs):
        if not r.kernel_gbs[n]:
            continue
        line = (f"kernels with their rows in cache, {n} thread{'s' if n > 1 else ''}: "
                + ", ".join(f"{t} {gbs:.1f}" for t, gbs in r.kernel_gbs[n].items()) + " GB/s")
        if n in r.ceiling_gbs and n in r.stream_gbs:
            line += (f"; for this mix at most {r.ceiling_gbs[n]:.1f} GB/s = "
                     f"{100 * r.ceiling_gbs[n] / r.stream_gbs[n]:.0f}% of best")
        console.print(line)
    if r.kernel_gbs:
        console.print("  (the other bound: how fast this CPU turns the weights into products with their rows in "
                      "cache, each type and row length timed on its largest matrix's rows. Where that is near or "
                      "below the best read, the CPU and not the memory limits decoding; % of kernels: that time "
                      "for the step's matrices over the decode time)")
    table = Table(show_edge=False)
    table.add_column("threads", justify="right")
    table.add_column("decode ms/tok", justify="right")
    table.add_column("GB/s", justify="right")
    table.add_column("% of sum", justify="right")
    table.add_column("% of best", justify="right")
    table.add_column("% of own pages", justify="right")
    table.add_column("% of kernels", justify="right")
    for chunk in PROMPT_CHUNKS:
        table.add_column(f"prompt {chunk} tok/s", justify="right")
    for run in r.runs:
        gbs = run.effective_gbs(r.bytes_per_token)
        table.add_row(
            str(run.threads),
            f"{run.decode_ms:.2f}",
            f"{gbs:.1f}",
            f"{100 * gbs / r.bandwidth_gbs[run.threads]:.0f}%",
            f"{100 * gbs / r.stream_gbs[run.threads]:.0f}%",
            f"{100 * gbs / r.weights_gbs[run.threads]:.0f}%",
            _share_of_kernels(r, run),
            *(f"{run.prompt_tok_s[c]:.0f}" for c in PROMPT_CHUNKS),
        )
    console.print(table)
    over = r.peak_rss_mb - r.file_bytes / 1e6
    console.print(f"peak RSS of a session (warm load, 256-token prompt, 16 tokens) {r.peak_rss_mb:.0f} MB "
                  f"(file {'+' if over >= 0 else '-'}{abs(over):.0f} MB)")
    return 0


def _share_of_kernels(r: BenchResult, run: ThreadResult) -> str:
    """How close the decode step's time comes to what its matrices take at the kernels' in-cache rates."""
    ms = r.kernel_ms(run.threads)
    return "-" if ms is None else f"{100 * ms / run.decode_ms:.0f}%"


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="measure decode and prompt speed, bandwidth, memory and load time")
    b.add_argument("model", type=Path, help="a GGUF or rwkv.cpp .bin model")
    b.add_argument("--threads", type=thread_count, default=None, help="one thread count (default: 1 and all cores)")
    b.add_argument("--steps", type=BENCH_STEPS, default=32, help="decode steps to time (default 32)")
    b.add_argument("--drop-cache", action="store_true",
                   help="drop the file's page cache first, so it is read back from disk (in 2 MB pages on Linux)")
    b.set_defaults(func=cmd_bench)
