"""`rwkv-tui eval`: how far quantized files' next-token distributions are from a reference's.

    rwkv-tui eval MODEL [MODEL…] --reference REF --text FILE [--json] [--max-tokens N]
    rwkv-tui eval --formats q4_0,q4_1,q5_1,q8_0,f16 SRC --text FILE

Prints perplexity, mean and 99th-percentile KL(reference ‖ model), top-1 agreement and the largest
|logit difference| per file. Ctrl-C stops at the next token and prints the figures so far, marked
partial (exit status 130); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from tui.commands.options import EVAL_TOKENS, thread_count
from tui.commands.output import console, err_console
from tui.units import human_bytes


def read_token_file(path: Path) -> list[int]:
    """Token ids from a text file of whitespace-separated integers."""
    from runtime.eval import EvalError

    try:
        words = _read(path, "--tokens").split()
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: not a text file of token ids ({e.reason})") from e
    ids = []
    for i, w in enumerate(words):
        try:
            ids.append(int(w))
        except ValueError:
            raise EvalError(f"{path}: word {i + 1} ('{w[:20]}') is not a token id (an integer)") from None
    return ids


def read_text_file(path: Path) -> str:
    from runtime.eval import EvalError

    try:
        return _read(path, "--text")
    except UnicodeDecodeError as e:
        raise EvalError(f"{path}: the text is not UTF-8 ({e.reason} at byte {e.start})") from e


def _read(path: Path, option: str) -> str:
    """The file an option names, or an EvalError naming the option, the file and why it cannot be read."""
    from runtime.eval import EvalError

    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        why = "no such file" if isinstance(e, FileNotFoundError) else (e.strerror or str(e)).lower()
        raise EvalError(f"{option} {path}: cannot read it ({why})") from None


@contextlib.contextmanager
def _progress_bars() -> Iterator:
    """A ProgressCallback drawing one bar per `what`, in bytes or tokens as each event says."""
    bar = RichProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def update(event) -> None:
        if event.unit == "B":
            amount = f"{human_bytes(event.done)} / {human_bytes(event.total)}"
        else:
            amount = f"{event.done}/{event.total} {event.unit}"
        task = tasks.get(event.what)
        if task is None:
            task = tasks[event.what] = bar.add_task(event.what, total=event.total or None, amount=amount)
        bar.update(task, completed=event.done, total=event.total or None, amount=amount)

    with bar:
        yield update


@contextlib.contextmanager
def _cancel_on_sigint(cancel) -> Iterator[None]:
    """First Ctrl-C sets `cancel` (the work stops cleanly at the next token); the second interrupts."""

    def handler(signum, frame) -> None:
        if cancel.cancelled:
            raise KeyboardInterrupt
        cancel.cancel()
        err_console.print("stopping after the current token (Ctrl-C again to abort)")

    try:
        old = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _num(v: float | None, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _table(report) -> Table:
    """One row per file; the tokens column only when some row covers fewer positions than asked."""
    title = "quantization quality"
    if report.partial:
        title += " — PARTIAL (cancelled)" if report.cancelled else " — PARTIAL"
    rows = ([report.reference] if report.reference else []) + report.results
    partial = any(r.partial for r in rows)
    t = Table(title=title, show_edge=False, pad_edge=False)
    names = ["model", "types", "size", *(["tokens"] if partial else []), "PPL", "KL mean", "KL p99", "top-1",
             "max|Δz|", "tok/s"]
    for name in names:
        t.add_column(name, justify="left" if name in ("model", "types") else "right", no_wrap=True,
                     min_width=9 if name == "model" else None)
    for r in rows:
        kl = not r.is_reference and r.positions > 0
        t.add_row(
            "reference" if r.is_reference else r.label, f"{r.matrices}/{r.head}", human_bytes(r.file_bytes),
            *([f"{r.positions}/{r.positions_wanted}"] if partial else []), _num(r.perplexity, ".6g"),
            _num(r.kl_mean, ".2e") if kl else "—", _num(r.kl_p99, ".2e") if kl else "—",
            _num(100 * r.top1, ".1f") + "%" if kl else "—", _num(r.max_logit_diff, ".3f") if kl else "—",
            _num(r.tokens_per_second, ".0f") if r.positions else "—",
        )
    return t


def cmd_eval(args: argparse.Namespace) -> int:
    from runtime.eval import EvalError, evaluate, evaluate_formats
    from runtime.progress import CancelToken

    if (args.text is None) == (args.tokens is None):
        raise EvalError("give the text to score with --text FILE, or token ids with --tokens FILE (one of them)")
    if args.formats:
        if len(args.models) != 1:
            raise EvalError("--formats takes exactly one source model (the checkpoint to quantize)")
    elif args.reference is None:
        raise EvalError("give the reference with --reference REF (an F32/F16 file or the source checkpoint)")
    source = args.text if args.text is not None else args.tokens
    text = read_text_file(args.text) if args.text is not None else read_token_file(args.tokens)
    common = dict(
        text_label=source.name, max_tokens=args.max_tokens, reference_type=args.reference_type,
        threads=args.threads, work_dir=args.tmp_dir,
    )
    cancel = CancelToken()
    with _cancel_on_sigint(cancel), _progress_bars() as progress:
        if args.formats:
            formats = [f for f in args.formats.split(",") if f.strip()]
            report = evaluate_formats(args.models[0], formats, text, reference=args.reference, progress=progress,
                                      cancel=cancel, **common)
        else:
            report = evaluate(args.models, args.reference, text, progress=progress, cancel=cancel,
                              save=not args.no_save, **common)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        # a pipe or a file gets the whole table; a terminal narrower than it gets rich's squeezed columns
        out = console if console.is_terminal else Console(highlight=False, width=200)
        out.print(_table(report))
        ref = report.reference.reference if report.reference else "the reference"
        console.print(
            f"reference: {ref}; text: {source.name}, {report.positions_wanted} positions; KL(reference ‖ model) "
            f"in nats; types: layer matrices/head; {report.seconds:.1f} s"
            + ("; stopped early: the figures cover fewer positions" if report.partial else "")
        )
    return 130 if report.cancelled else 0


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="measure quantization quality against a reference (perplexity, KL, top-1)",
        description="Compare model files with a reference of the same model on a text.",
    )
    e.add_argument("models", type=Path, nargs="+", help="GGUF or rwkv.cpp files (with --formats: the source)")
    e.add_argument("--reference", type=Path, help="F32/F16 file of the same model, or its .pth/.safetensors")
    e.add_argument("--formats", help="quantize temporary copies of the source to these types or K-quant mixes, "
                                     "e.g. q4_0,q5_1,q4_k_m,f16")
    e.add_argument("--text", type=Path, help="UTF-8 text to score (tokenized for the model)")
    e.add_argument("--tokens", type=Path, help="token ids to score, whitespace separated (instead of --text)")
    e.add_argument("--max-tokens", type=EVAL_TOKENS, default=512, help="score at most this many tokens (default 512)")
    e.add_argument("--reference-type", default="f32", choices=("f32", "f16"),
                   help="type a source-checkpoint reference is converted to (default f32)")
    e.add_argument("--threads", type=thread_count, default=None, help="threads (default: all cores)")
    e.add_argument("--tmp-dir", type=Path, default=None, help="folder for temporary files (default: system temp)")
    e.add_argument("--json", action="store_true", help="print the figures as JSON")
    e.add_argument("--no-save", action="store_true", help="do not remember the figures for the app's model screen")
    e.set_defaults(func=cmd_eval)
