"""Stand-alone builds of the weight kernels, callable from Python through ctypes (tests, benchmarks).

    lib = make_test_library([(DType.Q8_0, 768)])
    lib.matvec(DType.Q8_0, 768)(w_ptr, x_ptr, y_ptr, row_begin, row_end)
    lib.matmul(DType.Q8_0, 768)(w_ptr, X_ptr, ldx, Y_ptr, ldy, n_tok, row_begin, row_end)

Pointers may be ints (addresses) or ctypes pointers. ctypes releases the GIL during the call, so
several Python threads can run kernels at once.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterable
from dataclasses import dataclass, field

from llvmlite import ir

from runtime.jit.engine import CompiledModule, compile_module
from runtime.jit.kernels.matmul import emit_matmul
from runtime.jit.kernels.matvec import emit_matvec
from runtime.quant.types import DType

_P = ctypes.c_void_p
_L = ctypes.c_int64
MATVEC_CTYPE = ctypes.CFUNCTYPE(None, _P, _P, _P, _L, _L)
MATMUL_CTYPE = ctypes.CFUNCTYPE(None, _P, _P, _L, _P, _L, _L, _L, _L)


@dataclass
class KernelLibrary:
    """Compiled kernels and their ctypes callables, keyed by (kind, dtype, n_cols, accumulate)."""

    compiled: CompiledModule
    functions: dict[tuple[str, DType, int, bool], ctypes._CFuncPtr] = field(default_factory=dict)

    def matvec(self, dtype: DType, n_cols: int, accumulate: bool = False) -> ctypes._CFuncPtr:
        return self.functions[("matvec", dtype, n_cols, accumulate)]

    def matmul(self, dtype: DType, n_cols: int, accumulate: bool = False) -> ctypes._CFuncPtr:
        return self.functions[("matmul", dtype, n_cols, accumulate)]


def make_test_library(
    shapes: Iterable[tuple[DType, int]],
    *,
    accumulate: Iterable[bool] = (False, True),
    kinds: Iterable[str] = ("matvec", "matmul"),
    use_cache: bool = True,
) -> KernelLibrary:
    """Emit external-linkage kernels for every (dtype, n_cols) × accumulate × kind into one fresh
    module, compile it, and return ctypes callables."""
    module = ir.Module(name="weight_kernels")
    names: dict[tuple[str, DType, int, bool], str] = {}
    emitters = {"matvec": emit_matvec, "matmul": emit_matmul}
    for dtype, n_cols in shapes:
        for acc in accumulate:
            for kind in kinds:
                fn = emitters[kind](module, dtype, n_cols, accumulate=acc, linkage="external")
                names[(kind, dtype, n_cols, acc)] = fn.name
    compiled = compile_module(module, use_cache=use_cache)
    lib = KernelLibrary(compiled)
    for key, name in names.items():
        proto = MATVEC_CTYPE if key[0] == "matvec" else MATMUL_CTYPE
        lib.functions[key] = proto(compiled.address(name))
    return lib


def kernel_module(shapes: Iterable[tuple[DType, int]], accumulate: bool = False) -> ir.Module:
    """A module with external matvec and matmul kernels for each shape (for reading IR / assembly)."""
    module = ir.Module(name="weight_kernels")
    for dtype, n_cols in shapes:
        emit_matvec(module, dtype, n_cols, accumulate=accumulate, linkage="external")
        emit_matmul(module, dtype, n_cols, accumulate=accumulate, linkage="external")
    return module
