"""`rwkv-tui` and its subcommands. With no subcommand it opens the full-screen app.

Textual is imported only when the app is opened, so the scriptable commands start fast and work
where no terminal UI is wanted. Errors the user can act on (bad files, full disk) print one line and
exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from runtime.errors import RwkvError
from tui.commands import COMMANDS
from tui.commands.output import err_console


def cmd_app(args: argparse.Namespace) -> int:
    from tui.app import run_app

    return run_app(model=getattr(args, "model", None), resume=getattr(args, "resume", None))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rwkv-tui", description="Chat with local RWKV models on your CPU.")
    p.add_argument("--model", help="open the app with a new conversation on this model (path or id)")
    p.add_argument("--resume", help="open the app on a saved conversation (id or 'last')")
    p.set_defaults(func=cmd_app)
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    for name in COMMANDS:
        importlib.import_module(f"tui.commands.{name}").register(sub)
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
