"""`rwkv-tui models`: the registry with each model's status, size, recommended format and fit."""

from __future__ import annotations

import argparse

from rich.table import Table

from tui.commands.output import console, err_console
from tui.units import human_bytes


def print_warnings(warnings: list[str]) -> None:
    """Registry problems (bad entries are skipped, never fatal) on stderr."""
    for w in warnings:
        err_console.print(f"[yellow]warning:[/yellow] {w}", soft_wrap=True)


def cmd_models(args: argparse.Namespace) -> int:
    from runtime.registry.catalog import load_catalog
    from runtime.registry.jobs import JobQueue
    from runtime.registry.recommend import machine_resources, n_params, recommend
    from runtime.registry.status import delete_source, model_status, models_dir

    catalog = load_catalog()
    print_warnings(catalog.warnings)
    if args.delete_source:
        entry = catalog.get(args.delete_source)
        freed = delete_source(entry)
        console.print(f"deleted the source of {entry.id}, freed {human_bytes(freed)}")
        return 0
    jobs = JobQueue().list(include_finished=False)
    free_ram, free_disk = machine_resources(models_dir())
    table = Table(show_edge=False, pad_edge=False)
    for col, justify in [("id", "left"), ("model", "left"), ("arch", "left"), ("params", "right"),
                         ("status", "left"), ("disk", "right"), ("download", "right"), ("format", "left"),
                         ("RAM", "right"), ("fits", "left")]:
        table.add_column(col, justify=justify, overflow="fold")
    for entry in catalog.models.values():
        if args.runnable and not entry.runnable:
            continue
        status = model_status(entry, jobs)
        rec = recommend(entry, free_ram=free_ram, free_disk=free_disk, source_present=status.source is not None,
                        converted=frozenset(status.converted))
        fit = rec.fit(rec.choice)
        params = n_params(entry)
        style = "" if entry.runnable else "dim"
        table.add_row(
            entry.id, entry.name,
            entry.arch if entry.runnable else f"{entry.arch} (not yet)",
            f"{params / 1e9:.2f} B" if params else "?",
            _status_text(status),
            human_bytes(status.disk_bytes) if status.disk_bytes else "",
            human_bytes(entry.size) if entry.size else "?",
            rec.choice.name.lower(),
            human_bytes(fit.ram_bytes) if fit.ram_bytes else "?",
            _fit_text(fit),
            style=style,
        )
    console.print(table)
    console.print(f"[dim]free memory {human_bytes(free_ram)}, free disk {human_bytes(free_disk)} in {models_dir()}; "
                  f"registry: {catalog.shipped_path} and {catalog.user_path}[/dim]")
    return 0


def _status_text(status) -> str:
    from runtime.registry.status import DOWNLOADING, PAUSED, READY

    if status.state == READY:
        return "ready (" + ", ".join(sorted(t.name.lower() for t in status.converted)) + ")"
    if status.state in (PAUSED, DOWNLOADING) and status.partial_bytes and status.entry.size:
        return f"{status.state} {100 * status.partial_bytes / status.entry.size:.0f}%"
    return status.state


def _fit_text(fit) -> str:
    if fit.fits is None:
        return "?"
    if fit.fits:
        return "yes"
    short = [what for what, ok in (("RAM", fit.fits_ram), ("disk", fit.fits_disk)) if not ok]
    return "no: " + " and ".join(short)


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list the known models with their status, size and recommended format")
    m.add_argument("--runnable", action="store_true", help="only models this version can run (RWKV-4)")
    m.add_argument("--delete-source", metavar="ID", help="delete a model's downloaded .pth once it is converted")
    m.set_defaults(func=cmd_models)
