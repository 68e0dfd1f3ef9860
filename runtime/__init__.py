"""rwkv-tui's engine: model files, the native RWKV runtime, tokenizers and conversations.

Public API (kept stable for the app, the CLI and tests). Nothing here imports Textual or `tui`.

    model = runtime.load_model(path, threads=None)     # GGUF or rwkv.cpp .bin
    state = model.new_state()
    logits, new_state = model.forward(token_ids, state)

The model classes are imported on first use, so `import runtime` stays cheap for the CLI.
"""

from typing import Any

from runtime.errors import (
    CancelledError,
    InsufficientDiskSpaceError,
    ModelFileError,
    RwkvError,
    UnsafePickleError,
    UnsupportedModelError,
)

_LAZY = {
    "load_model": "runtime.model.model",
    "Model": "runtime.model.model",
    "State": "runtime.model.state",
    "StateError": "runtime.model.state",
    "convert": "runtime.convert",
    "load_tokenizer": "runtime.text.tokenizers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'runtime' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "CancelledError",
    "InsufficientDiskSpaceError",
    "Model",
    "ModelFileError",
    "RwkvError",
    "State",
    "StateError",
    "UnsafePickleError",
    "UnsupportedModelError",
    "convert",
    "load_model",
    "load_tokenizer",
]
