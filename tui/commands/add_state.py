"""`rwkv-tui add-state FILE --model MODEL`: register a state-tuning file as a starting state for a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from tui.commands.output import console


def cmd_add_state(args: argparse.Namespace) -> int:
    from runtime.registry.catalog import load_catalog
    from runtime.registry.states import add_state_for_model
    from tui.model_choice import resolve_model_ref

    catalog = load_catalog()
    path = resolve_model_ref(catalog, args.model, hint="name a model file or a registry id that is on this machine")
    model = args.model if args.model in catalog.models else str(path.expanduser().resolve())
    entry = add_state_for_model(args.file, model, path, name=args.name)
    console.print(f"added state [bold]{entry.name}[/bold] for {path.name} (RWKV-{entry.arch}, {entry.n_layer} layers, "
                  f"heads of {entry.head_size})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("add-state", help="register a state-tuning .pth as a starting state for a model")
    a.add_argument("file", type=Path, help="a BlinkDL state-tuning .pth (blocks.N.att.time_state per layer)")
    a.add_argument("--model", required=True, help="the model it is for: a model file or a registry id")
    a.add_argument("--name", default=None, help="the state's name (default: the file name)")
    a.set_defaults(func=cmd_add_state)
