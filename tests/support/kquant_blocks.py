"""Random valid K-quant super-blocks (Q2_K … Q6_K) and their values by ggml's reference arithmetic.

No quantizer is involved: every code and scale byte is random and the f16 super-block scales (d, and
dmin where the type has one) are set so the values have a chosen spread. `gguf.quants.dequantize` is
the reference decoder.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from runtime.formats.gguf_file import TensorPlan, read_gguf, write_gguf
from runtime.quant.types import DType

# byte offsets of the f16 super-block scales (d, dmin) and of the code bytes (the quants, without scales)
SCALE_OFFSETS = {DType.Q2_K: (80, 82), DType.Q3_K: (108,), DType.Q4_K: (0, 2), DType.Q5_K: (0, 2), DType.Q6_K: (208,)}
CODE_BYTES = {DType.Q2_K: (16, 80), DType.Q3_K: (0, 96), DType.Q4_K: (16, 144), DType.Q5_K: (16, 176),
              DType.Q6_K: (0, 192)}


def k_values(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """The float32 values of K-quant rows `raw` (uint8, rows × row bytes), by gguf's reference decoder."""
    rows = raw.shape[0] if raw.ndim > 1 else 1
    flat = gguf.quants.dequantize(np.ascontiguousarray(raw).reshape(-1), gguf.GGMLQuantizationType(int(dtype)))
    return flat.reshape(rows, -1).astype(np.float32)


def random_k_rows(dtype: DType, rows: int, cols: int, rng: np.random.Generator, spread: float = 1.0,
                  zero_first: bool = True) -> np.ndarray:
    """uint8 (rows, row bytes): random valid super-blocks whose values have standard deviation about
    `spread`; with `zero_first`, row 0's first super-block has d = dmin = 0 (all its values 0)."""
    raw = rng.integers(0, 256, size=(rows, dtype.row_bytes(cols)), dtype=np.uint8)
    blocks = raw.reshape(rows, cols // dtype.block_size, dtype.block_bytes)
    scales = rng.uniform(0.5, 1.5, size=(*blocks.shape[:2], len(SCALE_OFFSETS[dtype])))
    for i, off in enumerate(SCALE_OFFSETS[dtype]):
        blocks[..., off:off + 2] = scales[..., i:i + 1].astype(np.float16).view(np.uint8)
    factor = spread / float(np.std(k_values(raw, dtype)))
    for i, off in enumerate(SCALE_OFFSETS[dtype]):
        blocks[..., off:off + 2] = (scales[..., i:i + 1] * factor).astype(np.float16).view(np.uint8)
        if zero_first:
            blocks[0, 0, off:off + 2] = 0
    return raw


def code_part(raw: np.ndarray, dtype: DType) -> np.ndarray:
    """scale·q of every value (the value without its sub-block's bias): the values minus those of the
    same blocks with every code zeroed."""
    zeroed = raw.copy()
    lo, hi = CODE_BYTES[dtype]
    zeroed.reshape(-1, dtype.block_bytes)[:, lo:hi] = 0
    return k_values(raw, dtype).astype(np.float64) - k_values(zeroed, dtype)


def is_big_matrix(name: str, shape: tuple[int, ...], embedding: bool = False, min_rows: int = 256) -> bool:
    """The matrices a K-quant file stores as K blocks here: 2-D with rows of whole super-blocks and at
    least `min_rows` rows (256 leaves LoRA factors, whose rows are a small rank, as they are; 1 takes
    those whose rows hold whole super-blocks too), the embedding only with `embedding`."""
    return (len(shape) == 2 and shape[0] >= min_rows and shape[-1] % 256 == 0
            and (embedding or not name.startswith(("emb.", "token_embd."))))


def k_quant_pair(src: Path, k_path: Path, f32_path: Path | None, dtype: DType, seed: int = 0,
                 embedding: bool = False, min_rows: int = 256) -> list[str]:
    """From the GGUF `src`, write `k_path`, whose big matrices (`is_big_matrix`) are random valid
    `dtype` blocks with the spread of the originals, and (unless None) `f32_path`, the same model with
    those matrices as F32 holding exactly the values gguf's decoder gives for the blocks (the oracle).
    Everything else is copied byte for byte. Returns the replaced tensors' names."""
    g = read_gguf(src)
    arch = g.metadata["general.architecture"]
    metadata = [(k, v) for k, v in g.metadata.items() if k not in ("general.architecture", "general.alignment")]
    rng = np.random.default_rng(seed)
    replaced: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, t in g.tensors.items():
        if is_big_matrix(name, t.shape, embedding, min_rows):
            rows = int(np.prod(t.shape[:-1]))
            raw = random_k_rows(dtype, rows, t.shape[-1], rng, float(np.std(t.numpy())), zero_first=False)
            replaced[name] = (raw, k_values(raw, dtype) if f32_path is not None else raw)
    for path, as_k in ((k_path, True), (f32_path, False)):
        if path is None:
            continue
        plan = [TensorPlan(n, t.shape, (dtype if as_k else DType.F32) if n in replaced else t.dtype)
                for n, t in g.tensors.items()]

        def chunks(p: TensorPlan, as_k: bool = as_k):
            if p.name in replaced:
                yield replaced[p.name][0 if as_k else 1].tobytes()
            else:
                t = g.tensors[p.name]
                yield t.file.pread(t.offset, t.nbytes)

        with open(path, "wb") as f:
            write_gguf(f, arch, metadata, plan, chunks)
    g.file.close()
    return sorted(replaced)
