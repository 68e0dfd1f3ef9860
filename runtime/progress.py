"""One small progress event shared by every long operation, and a cancellation token.

Conversion, quantization, download and transcript ingestion report through a `ProgressCallback`;
the CLI renders the events with rich, the app with a ProgressBar. Cancelling is cooperative: the
worker checks `CancelToken.raise_if_cancelled()` between chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from runtime.errors import CancelledError


@dataclass(frozen=True, slots=True)
class Progress:
    """What is being done, how far along, in which unit ("B" for bytes, "tok" for tokens)."""

    what: str
    done: int
    total: int
    unit: str = "B"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


def no_progress(_event: Progress) -> None:
    """A progress callback that ignores every event."""


class CancelToken:
    """Thread-safe flag a UI sets and a worker polls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled")
