"""The console objects the command-line commands print through (stdout for results, stderr for the rest)."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
