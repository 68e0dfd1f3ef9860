"""Human-readable sizes, shared by the CLI and the app."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """`1234567` → `"1.2 MB"` (decimal units, as disks and downloads are sized)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
