"""`rwkv-tui inspect FILE [--verify]`: architecture, metadata and tensors of a model file; with
--verify, every tensor is scanned for values that are not finite or out of range."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from runtime.errors import ModelFileError
from tui.commands.output import console, err_console
from tui.units import human_bytes

if TYPE_CHECKING:
    from runtime.formats.detect import Architecture


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
        *_rwkv7_rows(a),
        ("vocabulary", str(a.n_vocab)),
        ("parameters", f"{sum(_numel(t.shape) for t in ckpt.tensors.values()) / 1e6:.1f} M"),
        ("tensor data", human_bytes(total)),
        ("transforms applied", ", ".join(sorted(ckpt.transforms)) or "none"),
    ]:
        summary.add_row(f"[dim]{k}[/dim]", v)
    console.print(summary)
    if ckpt.metadata:
        meta = Table(title="metadata", show_edge=False, title_justify="left")
        meta.add_column("key")
        meta.add_column("value", overflow="fold")
        for k, v in ckpt.metadata.items():
            meta.add_row(k, _short(v))
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
        table.add_row(n, "×".join(map(str, t.shape)), t.dtype.name, human_bytes(t.nbytes))
    console.print(table)
    _type_counts(ckpt)
    if not args.all and a.n_layer > 1:
        same = all(
            ckpt.tensors.get(n.replace("blocks.0.", f"blocks.{i}.")) is not None
            and ckpt.tensors[n.replace("blocks.0.", f"blocks.{i}.")].dtype == ckpt.tensors[n].dtype
            for i in range(1, a.n_layer)
            for n in block0
            if ".ln0." not in n
        )
        note = "repeat block 0's shapes and types" if same else "differ from block 0 in types"
        console.print(f"[dim]blocks.1 … blocks.{a.n_layer - 1} {note} (--all lists every tensor)[/dim]")
    if args.verify:
        _verify(ckpt)
    return 0


def _type_counts(ckpt) -> None:
    """For a GGUF file: how many tensors hold each type and the rule that gave it (runtime.quant.mixes)."""
    if ckpt.source_format != "gguf":
        return
    from runtime.formats.gguf_file import read_gguf
    from runtime.quant.mixes import MIX_BY_FILE_TYPE, TARGETS, type_summary

    raw = read_gguf(ckpt.path)
    recorded = raw.metadata.get("rwkv_tui.quant.target")
    target = TARGETS.get(recorded) if isinstance(recorded, str) else None
    if target is None:
        target = MIX_BY_FILE_TYPE.get(raw.metadata.get("general.file_type"))
    rows = type_summary(((t.name, t.shape, t.dtype) for t in raw.tensors.values()), target, ckpt.arch.n_layer)
    title = f"types ({target.name if target is not None else 'no known target'})"
    table = Table(title=title, show_edge=False, title_justify="left")
    for col in ("type", "tensors", "rule"):
        table.add_column(col, justify="right" if col == "tensors" else "left")
    for row in rows:
        table.add_row(row.dtype.name, str(row.count), row.rule)
    console.print(table)


def _verify(ckpt) -> None:
    from runtime.verify import MAX_PLAUSIBLE, verify_tensors
    from tui.progress_view import rich_progress

    with rich_progress(err_console) as progress:
        finding = verify_tensors(ckpt, progress)
    if finding is not None:
        raise ModelFileError(
            ckpt.path, f"damaged: {finding.describe()}. Download or convert the model again"
        )
    console.print(
        f"verified: all {len(ckpt.tensors)} tensors ({human_bytes(ckpt.tensor_bytes)}) are finite and "
        f"within ±{MAX_PLAUSIBLE:g}"
    )


def _short(value: object, items: int = 6) -> str:
    """A metadata value for a table: long lists (a vocabulary of 65536 tokens) cut to their first items."""
    if isinstance(value, list) and len(value) > items:
        shown = ", ".join(repr(v) for v in value[:items])
        return f"[{shown}, … {len(value)} items]"
    return str(value)


def _rwkv7_rows(a: Architecture) -> list[tuple[str, str]]:
    """Heads and LoRA ranks of RWKV-5.2/6/7."""
    if not a.head_size:
        return []
    rows = [("heads", f"{a.n_head} × head size {a.head_size}")]
    if a.lora is not None:
        rows.append(("LoRA ranks", ", ".join(f"{k} {v}" for k, v in a.lora._asdict().items())))
    if a.mix_ranks is not None:
        rows.append(("LoRA ranks", f"token shift {a.mix_ranks[0]}, decay {a.mix_ranks[1]}"))
    return rows


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def register(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="show a model file's architecture, metadata and tensors")
    i.add_argument("file", type=Path)
    i.add_argument("--all", action="store_true", help="list the tensors of every layer")
    i.add_argument(
        "--verify", action="store_true", help="read every tensor and name the first value that is not finite "
        "or out of range (a damaged file)"
    )
    i.set_defaults(func=cmd_inspect)
