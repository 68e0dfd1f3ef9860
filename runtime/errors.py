"""Exceptions the runtime raises, each with a message a user can act on.

Everything a user can trigger with a bad file, a bad argument or a full disk ends in one of these,
never in a crash of native code. The CLI maps them to exit status 2.
"""

from __future__ import annotations

import os


class RwkvError(Exception):
    """Base class of every error the runtime raises on purpose."""


class ModelFileError(RwkvError, ValueError):
    """A model file (checkpoint, rwkv.cpp .bin, GGUF) is unreadable, malformed or unsafe.

    The message always names the file and the problem.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsafePickleError(ModelFileError):
    """A pickle inside a checkpoint asks for a global outside the allow-list; nothing was executed."""

    def __init__(self, path: str | os.PathLike[str], global_name: str) -> None:
        self.global_name = global_name
        super().__init__(
            path,
            f"refusing to load: the pickle asks for '{global_name}', which is not allowed in a "
            "checkpoint of tensors (nothing was executed)",
        )


class DamagedModelError(ModelFileError):
    """A model file whose weights make the forward pass produce NaN or infinite values."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.what = what
        verb = "is" if what == "a state" else "are"
        super().__init__(
            path,
            f"the model produced {what} that {verb} not finite (NaN or infinity): the file is probably "
            f"damaged. Find the damaged tensor with: rwkv-tui inspect --verify '{os.fspath(path)}' "
            "(then download or convert the model again)",
        )


class UnsupportedModelError(ModelFileError):
    """The file is well formed but holds an architecture or type this version cannot run."""


class InsufficientDiskSpaceError(RwkvError, OSError):
    """Not enough free space where an output file is to be written."""

    def __init__(self, folder: str | os.PathLike[str], needed: int, free: int) -> None:
        self.folder = os.fspath(folder)
        self.needed = needed
        self.free = free
        super().__init__(
            f"not enough free disk space in {self.folder}: need {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free"
        )


class CancelledError(RwkvError):
    """Long work (conversion, download, ingestion) was cancelled by the user."""
