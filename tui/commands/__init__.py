"""One module per `rwkv-tui` subcommand; each exposes `register(subparsers)`.

A module imports its heavy dependencies inside its command function, so `rwkv-tui --help` and every
command start fast. Add a command by adding a module here and its name to `COMMANDS`.
"""

COMMANDS: tuple[str, ...] = (
    "convert",
    "inspect",
    "bench",
    "get",
    "models",
    "add",
    "add_state",
    "chat",
    "eval",
)
