"""`rwkv-tui` and its subcommands. With no subcommand it opens the full-screen app.

Textual is imported only when the app is opened, so the scriptable commands start fast and work
where no terminal UI is wanted. Errors the user can act on (bad files, full disk) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from runtime.errors import RwkvError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cmd_convert(args: argparse.Namespace) -> int:
    from runtime.convert import convert
    from tui.progress_view import rich_progress

    with rich_progress(err_console) as progress:
        result = convert(args.src, args.dst, args.type, head_dtype=args.head_type, progress=progress,
                         threads=args.threads)
    console.print(
        f"wrote {result.path} ({_human(result.nbytes)}, layers {result.dtype.name}, head "
        f"{result.head_dtype.name}) in {result.seconds:.1f} s"
    )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from runtime.formats.checkpoint import open_checkpoint

    ckpt = open_checkpoint(args.file)
    a = ckpt.arch
    total = ckpt.tensor_bytes
    console.print(f"[bold]{ckpt.path}[/bold]")
    summary = Table.grid(padding=(0, 2))
    for k, v in [
        ("format", ckpt.source_format),
        ("architecture", f"{a.name} ({'runnable' if a.runnable else 'not runnable yet'})"),
        ("layers × width", f"{a.n_layer} × {a.n_embd} (ffn {a.n_ffn})"),
        ("vocabulary", str(a.n_vocab)),
        ("parameters", f"{sum(_numel(t.shape) for t in ckpt.tensors.values()) / 1e6:.1f} M"),
        ("tensor data", _human(total)),
        ("transforms applied", ", ".join(sorted(ckpt.transforms)) or "none"),
    ]:
        summary.add_row(f"[dim]{k}[/dim]", v)
    console.print(summary)
    if ckpt.metadata:
        meta = Table(title="metadata", show_edge=False, title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in ckpt.metadata.items():
            meta.add_row(k, str(v))
        console.print(meta)
    table = Table(title="tensors", show_edge=False, title_justify="left")
    for col in ("name", "shape", "type", "size"):
        table.add_column(col, justify="right" if col == "size" else "left")
    names = list(ckpt.tensors)
    if not args.all and a.n_layer > 1:
        block0 = [n for n in names if n.startswith("blocks.0.")]
        names = [n for n in names if not n.startswith("blocks.") or n.startswith("blocks.0.")]
    for n in names:
        t = ckpt.tensors[n]
        table.add_row(n, "×".join(map(str, t.shape)), t.dtype.name, _human(t.nbytes))
    console.print(table)
    if not args.all and a.n_layer > 1:
        same = all(
            ckpt.tensors.get(n.replace("blocks.0.", f"blocks.{i}.")) is not None
            and ckpt.tensors[n.replace("blocks.0.", f"blocks.{i}.")].dtype == ckpt.tensors[n].dtype
            for i in range(1, a.n_layer) for n in block0 if ".ln0." not in n
        )
        note = "repeat block 0's shapes and types" if same else "differ from block 0 in types"
        console.print(f"[dim]blocks.1 … blocks.{a.n_layer - 1} {note} (--all lists every tensor)[/dim]")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from runtime.bench import PROMPT_CHUNKS, run_bench

    threads = [args.threads] if args.threads else None
    with err_console.status("benchmarking") as status:
        r = run_bench(args.model, threads, steps=args.steps, report=lambda m: status.update(m))
    console.print(f"[bold]{r.path.name}[/bold]  {_human(r.file_bytes)}")
    console.print(f"weights read per decoded token  {_human(r.bytes_per_token)}")
    console.print(f"memory read bandwidth (1 thread, numpy sum)  {r.bandwidth_gbs:.1f} GB/s")
    console.print(f"load: cold (compiling) {r.load_cold_s:.2f} s, warm (cached) {r.load_warm_s:.2f} s")
    table = Table(show_edge=False)
    table.add_column("threads", justify="right")
    table.add_column("decode ms/token", justify="right")
    table.add_column("effective GB/s", justify="right")
    for chunk in PROMPT_CHUNKS:
        table.add_column(f"prompt {chunk} tok/s", justify="right")
    for run in r.runs:
        table.add_row(str(run.threads), f"{run.decode_ms:.2f}", f"{run.effective_gbs(r.bytes_per_token):.1f}",
                      *(f"{run.prompt_tok_s[c]:.0f}" for c in PROMPT_CHUNKS))
    console.print(table)
    console.print(f"peak RSS {r.peak_rss_mb:.0f} MB")
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def cmd_app(args: argparse.Namespace) -> int:
    from tui.app import run_app

    return run_app(model=getattr(args, "model", None), resume=getattr(args, "resume", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rwkv-tui", description="Chat with local RWKV models on your CPU.")
    p.add_argument("--model", help="open the app with a new conversation on this model (path or id)")
    p.add_argument("--resume", help="open the app on a saved conversation (id or 'last')")
    p.set_defaults(func=cmd_app)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a .pth/.safetensors/rwkv.cpp .bin/GGUF model to GGUF")
    c.add_argument("src", type=Path, help="source model file (or a folder of Hugging Face shards)")
    c.add_argument("dst", type=Path, help="output .gguf file")
    c.add_argument("--type", default="q5_1", help="type of the layer matrices: f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0")
    c.add_argument("--head-type", default=None, help="type of the output head (default: chosen per --type)")
    c.add_argument("--threads", type=int, default=None, help="quantization threads (default: all cores)")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("inspect", help="show a model file's architecture, metadata and tensors")
    i.add_argument("file", type=Path)
    i.add_argument("--all", action="store_true", help="list the tensors of every layer")
    i.set_defaults(func=cmd_inspect)

    b = sub.add_parser("bench", help="measure decode and prompt speed, bandwidth, memory and load time")
    b.add_argument("model", type=Path, help="a GGUF or rwkv.cpp .bin model")
    b.add_argument("--threads", type=int, default=None, help="one thread count (default: 1 and all cores)")
    b.add_argument("--steps", type=int, default=32, help="decode steps to time")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RwkvError as e:
        err_console.print(f"[red]error:[/red] {e}")
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        err_console.print(f"[red]error:[/red] {e}")
        return 2
    except ValueError as e:  # bad option values (e.g. an unknown --type)
        err_console.print(f"[red]error:[/red] {e}")
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
