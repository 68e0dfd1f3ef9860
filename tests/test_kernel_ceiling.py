"""The kernels-in-cache bound `rwkv-tui bench` prints: which matrices it times, that every group gets a
rate, errors, and how the rates combine (not how fast they are; the timing loop: tests/jit/test_walk.py)."""

from __future__ import annotations

import math

import pytest

from runtime.bench import _decoded_matrices
from runtime.errors import DamagedModelError
from runtime.kernel_ceiling import (
    BLOCK_VALUES,
    MatrixShape,
    cached_kernel_rates,
    ceiling_gbs,
    matrix_shapes,
    rate_by_type,
)
from runtime.model.model import load_model
from runtime.quant.types import DType
from runtime.threadcount import ThreadCountError
from tests.support.rwkvcpp_writer import write_v4_model
from tests.support.synthetic import v4_state_dict


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("ceiling") / "small-q5_1.bin"
    write_v4_model(path, v4_state_dict(n_layer=2, n_embd=64, n_vocab=300, seed=5), DType.Q5_1)
    with load_model(path, threads=2) as m:
        yield m


def test_one_group_per_type_and_row_length_with_its_bytes_and_largest_matrix(model):
    matrices = _decoded_matrices(model)
    shapes = matrix_shapes(model, matrices)
    wanted = {name: t for name, t in model.tensors.items() if name in matrices and t.shape[-1] % BLOCK_VALUES == 0}
    assert {(s.dtype, s.n_cols) for s in shapes} == {(t.dtype, t.shape[-1]) for t in wanted.values()}
    assert len(shapes) >= 3  # Q5_1 rows of 64 and 256 values (att/ffn key, ffn value), the head's
    assert [s.step_bytes for s in shapes] == sorted((s.step_bytes for s in shapes), reverse=True)
    for s in shapes:
        group = {n: t for n, t in wanted.items() if (t.dtype, t.shape[-1]) == (s.dtype, s.n_cols)}
        assert s.step_bytes == sum(t.nbytes for t in group.values())
        largest = wanted[s.name]
        assert largest.nbytes == max(t.nbytes for t in group.values())
        assert (s.offset, s.rows) == (largest.offset, math.prod(largest.shape[:-1]))
    assert matrix_shapes(model, set()) == []


@pytest.mark.parametrize("threads", [1, 2])
def test_every_group_gets_a_rate(model, threads, monkeypatch):
    import runtime.kernel_ceiling as kc

    matrices = _decoded_matrices(model)
    shapes = matrix_shapes(model, matrices)
    for limit in (kc.MAX_CACHED_BYTES, 4096):  # the matrices' rows repeated, and only their first rows
        monkeypatch.setattr(kc, "MAX_CACHED_BYTES", limit)
        rates = cached_kernel_rates(model, shapes, threads, repeats=1)
        assert set(rates) == {(s.dtype, s.n_cols) for s in shapes}
        assert all(math.isfinite(v) and v > 0 for v in rates.values())
        assert set(rate_by_type(shapes, rates)) == {s.dtype for s in shapes}


def test_thread_counts_are_checked(model):
    for bad in (0, True, 10**6):
        with pytest.raises(ThreadCountError):
            cached_kernel_rates(model, matrix_shapes(model, _decoded_matrices(model)), bad)


def test_damaged_rows_are_named(model, monkeypatch):
    """A matrix whose products are not finite is reported as a damaged file, naming the matrix."""
    import runtime.kernel_ceiling as kc

    monkeypatch.setattr(kc, "_rate", lambda *args: (1.0, False))
    first = matrix_shapes(model, _decoded_matrices(model))[0]
    with pytest.raises(DamagedModelError, match=f"{first.dtype.name} products of {first.name}.*inspect --verify"):
        cached_kernel_rates(model, matrix_shapes(model, _decoded_matrices(model)), 1)


def _shape(dtype: DType, n_cols: int, nbytes: int) -> MatrixShape:
    return MatrixShape(dtype, n_cols, nbytes, "m", 1, 0)


def test_rates_combine_by_bytes_as_time_adds_up():
    shapes = [_shape(DType.Q2_K, 2048, 300), _shape(DType.Q6_K, 2048, 100), _shape(DType.Q2_K, 1024, 60),
              _shape(DType.F16, 32, 50)]
    rates = {(DType.Q2_K, 2048): 30.0, (DType.Q6_K, 2048): 100.0, (DType.Q2_K, 1024): 20.0}
    # 300 bytes at 30 GB/s, 100 at 100 and 60 at 20 take 10 + 1 + 3 time units; F16 has no rate
    assert ceiling_gbs(shapes, rates) == pytest.approx(460 / 14)
    assert rate_by_type(shapes, rates) == {DType.Q2_K: pytest.approx(360 / 13), DType.Q6_K: pytest.approx(100.0)}
    assert list(rate_by_type(shapes, rates)) == [DType.Q2_K, DType.Q6_K]
    assert ceiling_gbs(shapes, {(DType.Q6_K, 2048): 100.0}) == pytest.approx(100.0)
    assert ceiling_gbs(shapes, {}) is None and rate_by_type(shapes, {}) == {}
    assert ceiling_gbs([], rates) is None
