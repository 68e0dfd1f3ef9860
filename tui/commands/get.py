"""`rwkv-tui get MODEL_ID|URL`: download, verify, convert and quantize a model in one command."""

from __future__ import annotations

import argparse
import re

from tui.commands.output import console, err_console
from tui.units import human_bytes


def cmd_get(args: argparse.Namespace) -> int:
    from runtime.registry.catalog import RegistryError, load_catalog
    from runtime.registry.status import register_url
    from tui.commands.models import print_warnings

    sha = args.sha256.lower() if args.sha256 else None
    if sha is not None and not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise RegistryError(f"--sha256 must be 64 hexadecimal digits, got {args.sha256!r}")
    catalog = load_catalog()
    print_warnings(catalog.warnings)
    registered = False
    if "://" in args.model:
        entry = catalog.find_url(args.model)
        if entry is None:
            registered = True
            entry = register_url(args.model, sha256=sha, catalog=catalog)
            console.print(f"registered [bold]{entry.id}[/bold] in {catalog.user_path}")
    else:
        entry = catalog.get(args.model)
    if not registered:
        return _get(args, entry, sha)
    # a get that registered an address and failed leaves nothing behind but a resumable .part
    # (Ctrl-C keeps the registration: the message says to run it again to resume)
    try:
        status = _get(args, entry, sha)
    except KeyboardInterrupt:
        raise
    except BaseException:
        _forget(entry, catalog)
        raise
    if status != 0:
        _forget(entry, catalog)
    return status


def _forget(entry, catalog) -> None:
    from runtime.registry.status import forget_failed_url

    if forget_failed_url(entry, catalog):
        err_console.print(f"removed {entry.id} from the registry again")


def _get(args: argparse.Namespace, entry, sha: str | None) -> int:
    from runtime.quant.mixes import parse_target
    from runtime.registry.catalog import RegistryError
    from runtime.registry.jobs import DONE, JobEvent, JobRunner
    from runtime.registry.recommend import QUALITY_ORDER, machine_resources, recommend
    from runtime.registry.status import model_status, models_dir
    from tui.progress_view import rich_progress

    if sha and entry.sha256 and sha != entry.sha256:
        raise RegistryError(f"--sha256 {sha} differs from the registry's {entry.sha256} for {entry.id}")

    convert = not args.no_convert
    if convert and not entry.runnable:
        raise RegistryError(f"{entry.name} is an RWKV-{entry.arch} model; this version converts and runs RWKV-4 "
                            f"and RWKV-7 only (`rwkv-tui get {args.model} --no-convert` downloads it for later)")
    dtype = None
    if convert:
        status = model_status(entry)
        free_ram, free_disk = machine_resources(models_dir())
        rec = recommend(entry, free_ram=free_ram, free_disk=free_disk, source_present=status.source is not None,
                        converted=frozenset(status.converted))
        dtype = parse_target(args.type).base if args.type else rec.choice  # q5_k_m: Q5_K
        if not args.type:
            console.print(f"format {dtype.name.lower()} ({rec.reason})")
        fit = rec.fit(dtype) if dtype in QUALITY_ORDER else None
        if fit is not None and fit.fits_ram is False:
            err_console.print(f"[yellow]warning:[/yellow] {entry.id} in {dtype.name.lower()} needs about "
                              f"{human_bytes(fit.ram_bytes)} of memory; {human_bytes(free_ram)} is free")

    runner = JobRunner()
    job = runner.submit(entry.id, dtype, steps=("download", "convert") if convert else ("download",),
                        sha256=sha, delete_source=args.delete_source)
    said: set[str] = set()
    with rich_progress(err_console) as bar:
        def on_event(event: JobEvent) -> None:
            if event.job.id != job.id:
                return
            if event.progress is not None:
                bar(event.progress)
            elif event.job.message.startswith("waiting") and event.job.message not in said:
                said.add(event.job.message)
                err_console.print(event.job.message)

        runner.add_listener(on_event)
        try:
            final = runner.run(job.id)
        except KeyboardInterrupt:
            err_console.print(f"stopped; run `rwkv-tui get {args.model}` again to resume")
            raise
    if final.state == DONE:
        console.print(f"[green]{final.message}[/green]")
        return 0
    err_console.print(f"[red]{final.state}:[/red] {final.message}")
    return 2


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("get", help="download a model by registry id or URL, verify it and convert it")
    g.add_argument("model", help="a registry id (see `rwkv-tui models`) or an https:// address of a .pth")
    g.add_argument("--sha256", default=None, help="expected sha256 of the download (checked)")
    g.add_argument("--type", default=None, help="format: q8_0, q6_k, q5_k_m, q5_1, q5_0, q4_k_m, q4_1, q4_0, q3_k, "
                                                 "q2_k, f16 (default: recommended)")
    g.add_argument("--delete-source", action="store_true", help="delete the downloaded .pth after converting")
    g.add_argument("--no-convert", action="store_true", help="only download (any architecture)")
    g.set_defaults(func=cmd_get)
