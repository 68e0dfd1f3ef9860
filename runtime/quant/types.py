"""The weight types the project reads and writes, with ggml's numeric codes and block sizes.

Codes are ggml's (the ones GGUF stores). rwkv.cpp `.bin` files number the same types differently;
`runtime.formats.rwkvcpp` maps its codes onto these.
"""

from __future__ import annotations

import enum


class DType(enum.IntEnum):
    """A tensor element type. The value is ggml's type code."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30

    @property
    def block_size(self) -> int:
        """Values per block: 32 for the legacy quantized types, 256 for K-quant super-blocks, 1 for floats."""
        return _LAYOUT[self][0]

    @property
    def block_bytes(self) -> int:
        """Bytes per block."""
        return _LAYOUT[self][1]

    @property
    def is_quantized(self) -> bool:
        return self.block_size > 1

    @property
    def blocks_phrase(self) -> str:
        """What a row of this type is made of, for messages: 'K-quant super-blocks of 256 values'."""
        kind = "K-quant super-blocks" if self.block_size == 256 else f"{self.name} blocks"
        return f"{kind} of {self.block_size} values"

    def row_bytes(self, n_values: int) -> int:
        """Bytes taken by `n_values` consecutive values (a multiple of the block size)."""
        if n_values % self.block_size:
            raise ValueError(f"{self.name} needs a multiple of {self.block_size} values, got {n_values}")
        return n_values // self.block_size * self.block_bytes

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes of a tensor of `shape` (numpy order: the last dimension is contiguous)."""
        n_rows = 1
        for d in shape[:-1]:
            n_rows *= d
        return n_rows * self.row_bytes(shape[-1] if shape else 1)

    @classmethod
    def parse(cls, name: str) -> DType:
        """DType from a user's spelling: 'q5_1', 'Q5_1', 'f16', 'fp16'."""
        key = name.strip().upper().replace("FP", "F")
        try:
            return cls[key]
        except KeyError:
            choices = ", ".join(t.name.lower() for t in cls if t is not cls.BF16)
            raise ValueError(f"unknown type '{name}'; choose one of {choices}") from None


_LAYOUT: dict[DType, tuple[int, int]] = {
    DType.F32: (1, 4),
    DType.F16: (1, 2),
    DType.BF16: (1, 2),
    DType.Q4_0: (32, 18),
    DType.Q4_1: (32, 20),
    DType.Q5_0: (32, 22),
    DType.Q5_1: (32, 24),
    DType.Q8_0: (32, 34),
    # K-quants: super-blocks of 256 values (ggml's QK_K)
    DType.Q2_K: (256, 84),
    DType.Q3_K: (256, 110),
    DType.Q4_K: (256, 144),
    DType.Q5_K: (256, 176),
    DType.Q6_K: (256, 210),
}

QUANTIZED_TYPES: tuple[DType, ...] = (DType.Q4_0, DType.Q4_1, DType.Q5_0, DType.Q5_1, DType.Q8_0)
K_QUANT_TYPES: tuple[DType, ...] = (DType.Q2_K, DType.Q3_K, DType.Q4_K, DType.Q5_K, DType.Q6_K)
FLOAT_TYPES: tuple[DType, ...] = (DType.F32, DType.F16, DType.BF16)
