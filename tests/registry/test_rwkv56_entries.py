"""RWKV-5.2 and RWKV-6 files in the registry: `rwkv-tui add` records their version and they are runnable."""

from __future__ import annotations

from pathlib import Path

from runtime.registry.catalog import load_catalog
from runtime.registry.status import register_local

TINY = Path(__file__).parent.parent / "fixtures" / "rwkvcpp" / "tiny56"


def test_local_rwkv52_and_rwkv6_files_register_as_runnable():
    v5 = register_local(TINY / "tiny-rwkv-5v2-730K-FP32.bin")
    v6 = register_local(TINY / "tiny-rwkv-6v0-3m-Q5_1.bin")
    assert (v5.arch, v5.runnable, v5.n_layer, v5.n_embd) == ("5.2", True, 12, 64)
    assert (v6.arch, v6.runnable, v6.n_layer, v6.n_embd) == ("6", True, 12, 128)
    models = load_catalog().models  # the saved entries read back
    assert models[v5.id].arch == "5.2" and models[v6.id].arch == "6"
