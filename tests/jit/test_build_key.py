"""A model's object code is found in the cache by its architecture, spec, source and kernel switches
(build_key.py), so a warm load builds no IR; anything that decides the IR changes the key."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.jit import build_key as build_key_module
from runtime.jit.build_key import build_key
from runtime.jit.kernels import matvec
from runtime.model.loader import load_weights
from runtime.model.model import Model
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import blinkdl_v7_to_rwkvcpp, write_rwkvcpp
from tests.support.synthetic import v7_state_dict


@pytest.fixture()
def v7_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RWKV_TUI_CACHE_DIR", str(tmp_path / "cache"))
    sd = v7_state_dict(n_layer=2, n_embd=128, n_vocab=96, seed=3)
    stored = blinkdl_v7_to_rwkvcpp(sd, DType.F32)
    return write_rwkvcpp(tmp_path / "m.bin", stored, n_vocab=96, n_embd=128, n_layer=2, data_type=DType.F32)


@pytest.fixture()
def builds(monkeypatch) -> list[int]:
    """One entry per IR build of an RWKV-7 forward module."""
    from runtime.model.arch import rwkv7

    calls: list[int] = []
    real = rwkv7.build_forward_module

    def counted(spec):
        calls.append(1)
        return real(spec)

    monkeypatch.setattr(rwkv7, "build_forward_module", counted)
    return calls


def _load(path) -> tuple[Model, np.ndarray]:
    model = Model(load_weights(path), 1)
    logits, _ = model.forward([1, 2, 3])
    return model, logits


def test_a_warm_load_builds_no_ir_and_computes_the_same(v7_file, builds):
    cold, cold_logits = _load(v7_file)
    warm, warm_logits = _load(v7_file)
    assert (cold.compiled_from_cache, warm.compiled_from_cache) == (False, True)
    assert len(builds) == 1
    np.testing.assert_array_equal(cold_logits, warm_logits)
    cold.close()
    warm.close()


def test_a_changed_kernel_switch_builds_again(v7_file, builds, monkeypatch):
    _load(v7_file)[0].close()
    monkeypatch.setattr(matvec, "PREFETCH_BYTES", matvec.PREFETCH_BYTES // 2)
    model, _ = _load(v7_file)
    assert len(builds) == 2 and not model.compiled_from_cache  # new IR: compiled, not taken from the cache
    model.close()


def test_the_key_follows_the_description_and_the_source(monkeypatch):
    first = build_key("rwkv7 spec A")
    assert build_key("rwkv7 spec A") == first
    assert build_key("rwkv7 spec B") != first
    monkeypatch.setattr(build_key_module, "source_digest", lambda: b"edited source")
    assert build_key("rwkv7 spec A") != first


def test_without_readable_source_the_ir_is_built_every_time(v7_file, builds, monkeypatch):
    monkeypatch.setattr(build_key_module, "source_digest", lambda: None)
    for _ in range(2):
        model, _ = _load(v7_file)
        model.close()
    assert len(builds) == 2
