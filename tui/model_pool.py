"""Loaded models shared by the app's panes: one `runtime.Model` per file, closed when no pane uses it.

`acquire` blocks (it may load and compile), so panes call it from thread workers. Two panes asking for
the same file at once wait for one load. The forward calls of a shared model are serialised by the
model's own lock.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any


class ModelPool:
    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._loading: dict[Path, threading.Lock] = {}
        self._models: dict[Path, Any] = {}
        self._users: dict[Path, int] = {}

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> Path:
        return Path(path).expanduser().resolve()

    def acquire(self, path: str | os.PathLike[str]) -> Any:
        """The loaded model for `path` (loading it if needed); pair with `release`."""
        key = self._key(path)
        with self._lock:
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                model = self._models.get(key)
                if model is not None:
                    self._users[key] += 1
                    return model
            import runtime

            model = runtime.load_model(key, threads=self._threads)
            with self._lock:
                self._models[key] = model
                self._users[key] = 1
            return model

    def release(self, model: Any) -> None:
        """One user fewer; the model is closed when nobody uses it."""
        if model is None:
            return
        key = self._key(model.path)
        with self._lock:
            if self._models.get(key) is not model:
                return
            self._users[key] -= 1
            if self._users[key] > 0:
                return
            del self._models[key], self._users[key]
        model.close()

    def loaded(self) -> list[Any]:
        with self._lock:
            return list(self._models.values())

    def close_all(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
            self._users.clear()
        for model in models:
            model.close()
