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
    from runtime.registry.machine_speed import memory_read_gbs
    from runtime.registry.recommend import machine_resources, n_params, ram_bytes, recommend, starter_model
    from runtime.registry.status import all_statuses, delete_source, models_dir

    catalog = load_catalog()
    print_warnings(catalog.warnings)
    if args.delete_source:
        entry = catalog.get(args.delete_source)
        freed = delete_source(entry)
        console.print(f"deleted the source of {entry.id}, freed {human_bytes(freed)}")
        return 0
    jobs = JobQueue().list(include_finished=False)
    free_ram, free_disk = machine_resources(models_dir())
    read_gbs = memory_read_gbs()  # measured the first time (about a second), then kept
    starter = starter_model(catalog.models.values(), free_ram=free_ram, read_gbs=read_gbs)
    statuses = all_statuses(catalog, jobs)
    if starter is not None:  # first among the models still to get
        statuses.sort(key=lambda s: (not s.here, s.entry.id != starter.entry.id))
    rows = []
    for status in statuses:
        entry = status.entry
        if args.runnable and not entry.runnable:
            continue
        rec = recommend(entry, free_ram=free_ram, free_disk=free_disk, source_present=status.source is not None,
                        converted=frozenset(status.converted))
        # a model on disk is listed with the type it runs in; one still to get with the recommended type
        on_disk = status.best_type()  # (a DType, F32 is 0: compare with None)
        use = rec.choice if on_disk is None else on_disk
        ram = ram_bytes(entry, use)
        fits = _fit_text(rec.fit(use)) if on_disk is None else (
            "?" if ram is None else "yes" if ram <= free_ram else "no: RAM")
        params = n_params(entry)
        rows.append((entry.runnable, {
            "id": entry.id, "model": entry.name,
            "arch": entry.arch if entry.runnable else f"{entry.arch} (not yet)",
            "params": f"{params / 1e9:.2f} B" if params else "?",
            "status": _status_text(status),
            "disk": human_bytes(status.bytes_on_disk) if status.bytes_on_disk else "",
            "download": "own file" if status.own else human_bytes(entry.size) if entry.size else "?",
            "format": use.name.lower(),
            "RAM": human_bytes(ram) if ram else "?",
            "fits": fits,
        }))
    if starter is not None:
        console.print(starter_line(starter, free_ram, read_gbs), soft_wrap=not console.is_terminal, markup=False)
    if console.is_terminal:
        console.print(_fitted_table(rows, console.width))
    else:
        _print_plain(rows)
    console.print(f"[dim]free memory {human_bytes(free_ram)}, free disk {human_bytes(free_disk)} in {models_dir()}; "
                  f"registry: {catalog.shipped_path} and {catalog.user_path}[/dim]", soft_wrap=not console.is_terminal)
    return 0


def starter_line(rec, free_ram: int, read_gbs: float | None = None) -> str:
    """The model to start with on this machine, in one line (the welcome screen says the same); with
    `read_gbs` (this machine's memory read) also its estimated decoding speed."""
    from runtime.registry.recommend import decode_rate, ram_bytes

    need = ram_bytes(rec.entry, rec.choice)
    rate = decode_rate(rec.entry, rec.choice, read_gbs) if read_gbs is not None else None
    speed = f", about {rate:.0f} tokens/s" if rate else ""
    return (f"Recommended here: {rec.entry.id} ({rec.entry.name}) in {rec.choice.name.lower()}, "
            f"{human_bytes(need)} of memory of {human_bytes(free_ram)} free{speed}: rwkv-tui get {rec.entry.id}")


# columns, most important first; a narrow terminal drops them from the end of this list
COLUMNS = ("id", "status", "format", "disk", "RAM", "fits", "arch", "download", "params", "model")
ORDER = ("id", "model", "arch", "params", "status", "disk", "download", "format", "RAM", "fits")
RIGHT = {"params", "disk", "download", "RAM"}
ID_WIDTH = 24  # longer ids are cut with an ellipsis on a terminal (plain output prints them whole)


def _fitted_table(rows: list[tuple[bool, dict[str, str]]], width: int) -> Table:
    """A table of the columns that fit `width` (one row per model, long values cut, never wrapped)."""
    def col_width(name: str) -> int:
        widest = max([len(name)] + [len(r[name]) for _, r in rows])
        return min(widest, ID_WIDTH) if name in ("id", "model") else widest

    shown = []
    used = 0
    for name in COLUMNS:
        need = col_width(name) + (1 if shown else 0)
        if used + need > width and shown:
            continue
        shown.append(name)
        used += need
    table = Table(show_edge=False, pad_edge=False, box=None, padding=(0, 1, 0, 0))
    for name in (n for n in ORDER if n in shown):
        table.add_column(name, justify="right" if name in RIGHT else "left", no_wrap=True, overflow="ellipsis",
                         max_width=ID_WIDTH if name in ("id", "model") else None, header_style="bold")
    for runnable, row in rows:
        table.add_row(*(row[n] for n in ORDER if n in shown), style="" if runnable else "dim")
    return table


def _print_plain(rows: list[tuple[bool, dict[str, str]]]) -> None:
    """Every column, aligned with two spaces and nothing cut, for pipes and files."""
    widths = {n: max([len(n)] + [len(r[n] or "-") for _, r in rows]) for n in ORDER}
    def line(cells: dict[str, str]) -> str:
        return "  ".join((cells[n] or "-").rjust(widths[n]) if n in RIGHT else (cells[n] or "-").ljust(widths[n])
                         for n in ORDER).rstrip()

    lines = [line({n: n for n in ORDER})] + [line(row) for _, row in rows]
    console.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)


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
    m.add_argument("--runnable", action="store_true", help="only models this version can run (RWKV-4 and RWKV-7)")
    m.add_argument("--delete-source", metavar="ID", help="delete a model's downloaded .pth once it is converted")
    m.set_defaults(func=cmd_models)
