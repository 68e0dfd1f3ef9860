"""Argument types for the numeric options of every `rwkv-tui` command, so each range is checked in one
place: argparse prints "argument --steps: must be …, got '0'" and exits with status 2 before any
work starts.

    parser.add_argument("--threads", type=thread_count)
    parser.add_argument("--steps", type=int_range(1, 100_000))
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse type accepting whole numbers from `low` to `high` (inclusive)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low:,} to {high:,}, got {text!r}")
        return value

    parse.__name__ = f"whole number from {low} to {high}"
    return parse


def thread_count(text: str) -> int:
    """An argparse type for --threads: 1 to the runtime's limit (runtime/threadcount.py)."""
    from runtime.threadcount import check_threads, thread_range_text

    try:
        value = int(text)
        check_threads(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"use {thread_range_text()}, got {text!r}") from None
    return value


def reply_tokens(text: str) -> int:
    """An argparse type for a reply's --max-tokens: the sampling settings' own range."""
    from runtime.text.sampling import MAX_TOKENS_LIMIT

    return int_range(1, MAX_TOKENS_LIMIT)(text)


SEED = int_range(0, 2**64 - 1)
BENCH_STEPS = int_range(1, 100_000)
EVAL_TOKENS = int_range(2, 10_000_000)
