"""warm_plan: what a thread that waits at a barrier prefetches of the product after it. For one token the
runs start where the matvec kernel starts its row streams (rows r0 + s·per, per = (r1 − r0) // step); for
a prompt chunk one run from r0 (the prompt kernel's first tile); never more lines than the rows hold,
and nothing for an empty range. Computed by the compiled IR, checked against the kernel's walk."""

from __future__ import annotations

import ctypes

import pytest
from llvmlite import ir

from runtime.jit.engine import compile_module
from runtime.jit.irkit import I8P, I64, VOID
from runtime.jit.kernels.matvec import rows_per_step, walks_streams
from runtime.model.arch import base
from runtime.model.arch.base import NextProduct, warm_plan
from runtime.quant.types import DType

PLAN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p)


def _compiled_plan(dtype: DType, n_cols: int):
    m = ir.Module("warm_plan")
    fn = ir.Function(m, ir.FunctionType(VOID, [I8P, I64, I64, I64, I64.as_pointer()]), "plan")
    w, r0, r1, n_tok, out = fn.args
    b = ir.IRBuilder(fn.append_basic_block())
    start, stride, streams, lines = warm_plan(b, NextProduct(dtype, n_cols, w, r0, r1, n_tok))
    offset = b.sub(b.ptrtoint(start, I64), b.ptrtoint(w, I64))
    for i, v in enumerate((offset, stride, streams, lines)):
        b.store(v, b.gep(out, [ir.Constant(I64, i)]))
    b.ret_void()
    lib = compile_module(m)
    return lib, PLAN(lib.address("plan"))


@pytest.mark.parametrize("dtype, n_cols", [(DType.Q4_K, 1024), (DType.Q5_1, 2048), (DType.F16, 1024),
                                           (DType.F16, 32), (DType.Q8_0, 96)], ids=str)
def test_runs_start_where_the_kernel_walks_first(dtype: DType, n_cols: int) -> None:
    lib, plan = _compiled_plan(dtype, n_cols)
    row_bytes = dtype.row_bytes(n_cols)
    step = rows_per_step(dtype, n_cols)
    out = (ctypes.c_int64 * 4)()
    for r0, r1 in ((0, 1024), (512, 1024), (100, 101), (7, 3), (0, 0)):
        for n_tok in (1, 5):
            plan(0x10000, r0, r1, n_tok, ctypes.addressof(out))
            offset, stride, streams, lines = out
            rows = max(r1 - r0, 0)
            assert offset == r0 * row_bytes
            if n_tok == 1 and walks_streams(dtype, n_cols):
                assert streams == step
                # run s starts at the first row of the kernel's stream s
                assert [offset + s * stride for s in range(streams)] == [
                    (r0 + s * (rows // step)) * row_bytes for s in range(step)]
            else:
                assert streams == 1
            assert lines == min(streams * base.WARM_LINES, -(-rows * row_bytes // 64))
    del lib
