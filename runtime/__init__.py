"""rwkv-tui's engine: model files, the native RWKV runtime, tokenizers and conversations.

Public API (kept stable for the app, the CLI and tests). Nothing here imports Textual or `tui`.
"""

from runtime.errors import (
    CancelledError,
    InsufficientDiskSpaceError,
    ModelFileError,
    RwkvError,
    UnsafePickleError,
    UnsupportedModelError,
)

__all__ = [
    "CancelledError",
    "InsufficientDiskSpaceError",
    "ModelFileError",
    "RwkvError",
    "UnsafePickleError",
    "UnsupportedModelError",
]
