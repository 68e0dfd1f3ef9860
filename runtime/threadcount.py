"""How many threads this process may run on, and the one limit every thread count is checked against.

    check_threads(n)        # n, or None for the default; ThreadCountError outside 1 … max_threads()

A thread pool beyond a few threads per core only waits at its barriers (and 100 000 threads take
seconds to fail with "can't start new thread"), so the model, the converter and `bench` refuse more
than MAX_PER_CORE threads per core with a message saying the range. Imports nothing heavy: the CLI
checks its options with it before loading anything.
"""

from __future__ import annotations

import operator
import os

from runtime.errors import RwkvError

MAX_PER_CORE = 4


class ThreadCountError(RwkvError, ValueError):
    """A thread count below one or above `max_threads()`."""


def default_threads() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    """The largest thread count accepted anywhere: MAX_PER_CORE per core this process may run on."""
    return MAX_PER_CORE * default_threads()


def thread_range_text() -> str:
    """The accepted range in words, for messages."""
    cores = default_threads()
    return (f"at least one thread and at most {max_threads()} ({MAX_PER_CORE} per core; "
            f"this process may run on {cores} core{'s' if cores > 1 else ''})")


def check_threads(n: int | None) -> int | None:
    """`n` unchanged when it is None (the default) or within 1 … max_threads(); else ThreadCountError."""
    if n is None:
        return None
    try:
        count = operator.index(n)
    except TypeError:
        count = None
    if count is None or isinstance(n, bool) or not 1 <= count <= max_threads():
        raise ThreadCountError(f"{n!r} threads: use {thread_range_text()}")
    return count
