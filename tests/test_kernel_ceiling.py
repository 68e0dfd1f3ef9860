"""The kernels-in-cache bound `rwkv-tui bench` prints: which matrices it times, that it times the very
kernel the model uses (same products), and how the per-type rates combine (not how fast they are)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runtime.bench import _decoded_matrices
from runtime.jit.kernels.library import make_test_library
from runtime.kernel_ceiling import (
    BLOCK_VALUES,
    TypeShare,
    _repeating_kernels,
    cached_kernel_rates,
    ceiling_gbs,
    type_shares,
)
from runtime.model.model import load_model
from runtime.quant.types import DType
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ceiling") / "small-q5_1.bin"
    write_v4_model(path, v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=5), DType.Q5_1)
    with load_model(path, threads=2) as m:
        yield m


def test_each_type_of_the_decoded_matrices_once_with_its_bytes_and_largest_matrix(model):
    matrices = _decoded_matrices(model)
    shares = type_shares(model, matrices)
    wanted = [t for name, t in model.tensors.items() if name in matrices and t.shape[-1] % BLOCK_VALUES == 0]
    assert {s.dtype for s in shares} == {t.dtype for t in wanted}
    assert [s.step_bytes for s in shares] == sorted((s.step_bytes for s in shares), reverse=True)
    for s in shares:
        of_type = [t for t in wanted if t.dtype is s.dtype]
        assert s.step_bytes == sum(t.nbytes for t in of_type)
        largest = max(of_type, key=lambda t: t.nbytes)
        assert (s.offset, s.n_cols, s.rows) == (largest.offset, largest.shape[-1], math.prod(largest.shape[:-1]))
    assert type_shares(model, set()) == []


def test_the_timed_loop_runs_the_models_kernel(model):
    """The repeating wrapper computes what the stand-alone matvec computes on the same rows, however often
    it repeats (y is overwritten, not accumulated)."""
    s = type_shares(model, _decoded_matrices(model))[0]
    row_bytes = s.dtype.row_bytes(s.n_cols)
    rows = s.rows
    w = np.array(model.mapped_bytes()[s.offset : s.offset + rows * row_bytes])
    x = np.random.default_rng(1).standard_normal(s.n_cols).astype(np.float32)
    expected = np.zeros(rows, dtype=np.float32)
    library = make_test_library([(s.dtype, s.n_cols)], accumulate=(False,), kinds=("matvec",))
    library.matvec(s.dtype, s.n_cols)(w.ctypes.data, x.ctypes.data, expected.ctypes.data, 0, rows)
    compiled, kernels = _repeating_kernels([(s.dtype, s.n_cols)])
    repeat = kernels[(s.dtype, s.n_cols)]
    for times in (1, 3):
        y = np.full(rows, np.nan, dtype=np.float32)
        repeat(w.ctypes.data, x.ctypes.data, y.ctypes.data, rows, times)
        np.testing.assert_array_equal(y, expected)
    assert np.abs(expected).max() > 0
    del compiled


@pytest.mark.parametrize("threads", [1, 2])
def test_every_type_gets_a_rate(model, threads):
    matrices = _decoded_matrices(model)
    rates = cached_kernel_rates(model, matrices, threads, repeats=1)
    assert set(rates) == {s.dtype for s in type_shares(model, matrices)}
    assert all(math.isfinite(v) and v > 0 for v in rates.values())


def test_threads_must_be_positive(model):
    with pytest.raises(ValueError, match="threads must be at least 1"):
        cached_kernel_rates(model, _decoded_matrices(model), 0)


def test_rates_combine_by_bytes_as_time_adds_up():
    shares = [TypeShare(DType.Q2_K, 300, 1, 256, 0), TypeShare(DType.Q6_K, 100, 1, 256, 0),
              TypeShare(DType.F16, 50, 1, 32, 0)]
    # 300 bytes at 30 GB/s and 100 at 100 GB/s take 10 + 1 time units: 400 bytes / 11; F16 has no rate
    assert ceiling_gbs(shares, {DType.Q2_K: 30.0, DType.Q6_K: 100.0}) == pytest.approx(400 / 11)
    assert ceiling_gbs(shares, {DType.Q6_K: 100.0}) == pytest.approx(100.0)
    assert ceiling_gbs(shares, {}) is None
    assert ceiling_gbs([], {DType.Q2_K: 1.0}) is None
