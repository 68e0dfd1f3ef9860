"""`rwkv-tui add PATH`: register a local .pth, .bin or .gguf model in the user registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui.commands.output import console


def cmd_add(args: argparse.Namespace) -> int:
    from runtime.registry.catalog import load_catalog
    from runtime.registry.status import SOURCE_ONLY, model_status, register_local
    from tui.commands.models import print_warnings

    catalog = load_catalog()
    print_warnings(catalog.warnings)
    entry = register_local(args.path, model_id=args.id, name=args.name, family=args.family, catalog=catalog)
    status = model_status(entry)
    console.print(
        f"added [bold]{entry.id}[/bold] ({entry.name}): RWKV-{entry.arch}, {entry.n_layer} layers × {entry.n_embd}, "
        f"vocabulary {entry.vocab}, family {entry.family}; {status.state}"
    )
    if status.state == SOURCE_ONLY:
        console.print(f"convert it with: rwkv-tui get {entry.id}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("add", help="register a local .pth, .bin or .gguf model (the file stays where it is)")
    a.add_argument("path", type=Path)
    a.add_argument("--id", default=None, help="registry id (default: from the file name)")
    a.add_argument("--name", default=None, help="display name (default: the file name)")
    a.add_argument("--family", default=None, help="raven, world, novel or pile (default: guessed from the name)")
    a.set_defaults(func=cmd_add)
