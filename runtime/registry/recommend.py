"""Sizes per format, the RAM a model needs, and which format to use on this machine.

File size per format follows the converter's rule (`runtime.quant.mixes`): layer matrices
in the chosen type, the head in its default type for that target (Q6_K for the K mixes), the embedding
F16, 1-D tensors F32. RAM to run it = the memory-mapped file + the float32 vector block + the scratch buffer
(`runtime.model.arch.rwkv4.ModelSpec`) + two states and the logits + a fixed overhead for the process
(Python, llvmlite, compiled kernels, tokenizer, UI). A `ram = { q5_1 = … }` table in the registry
overrides the estimate. For architectures this runtime cannot run yet the figures are estimates from
the parameter count (the bf16 checkpoint's size / 2 when known).

Default format, from the README's quality tables (`rwkv-tui eval --formats …` on 1.5B-shaped random
RWKV-4 and RWKV-7 models, mean KL divergence from the float model): Q5_K (the q5_k_m mix: Q5_K
matrices, Q6_K head) is 7.6 % smaller than Q5_1 (Q8_0 head) with a lower mean and p99 KL on both
architectures, so it is the default above 1B parameters. 4-bit formats cost 3-5x the KL of Q5_1
(Q4_K the least of them), so they are never the default; they are offered only when nothing better
fits. Models under 1B parameters default to Q8_0: small models lose the most to quantization (their
rows are short, so the per-block error is a larger share of the signal), and at that size Q8_0 costs
a few hundred MB. If the default does not fit the free RAM, the best format that does is chosen
(`QUALITY_ORDER`, by measured KL; float formats are offered, never chosen; Q3_K and Q2_K are offered,
never chosen).

The model suggested first (`starter_model`: the welcome screen, `rwkv-tui models`, the models screen)
is the largest runnable G1 whose default format fits in three quarters of the free memory and, where
this machine's memory read is known (`machine_speed.memory_read_gbs`), is estimated to decode at least
STARTER_TOKENS_PER_S (`decode_rate`: decoding reads every weight but the embedding once per token, at
about DECODE_SHARE of the compiled read); if none that fits is that fast, the smallest that fits. Memory
alone would suggest G1 13.3B to a 2-core machine with 24 GB free: a 26 GB download that then answers at
about 3 tokens a second.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.model.arch.rwkv4 import STATE_ROWS, ModelSpec, Vec
from runtime.model.layout import GlobalVec
from runtime.quant.types import DType
from runtime.registry.catalog import ModelEntry

# mean KL(float ‖ format) per token, RWKV-7 1.5B-shaped random model (README, "Quantization quality")
MEASURED_KL = {
    DType.Q8_0: 1.5e-4, DType.Q6_K: 1.7e-3, DType.Q5_K: 6.4e-3, DType.Q5_1: 6.7e-3, DType.Q5_0: 8.5e-3,
    DType.Q4_K: 2.3e-2, DType.Q4_1: 2.7e-2, DType.Q4_0: 3.3e-2,
}
# formats that may be chosen automatically, best quality first (quantized ones by MEASURED_KL)
QUALITY_ORDER: tuple[DType, ...] = (
    DType.F32, DType.F16, DType.Q8_0, DType.Q6_K, DType.Q5_K, DType.Q5_1, DType.Q5_0, DType.Q4_K, DType.Q4_1,
    DType.Q4_0,
)
# what the format dialog offers: the above plus Q3_K and Q2_K (far more loss; chosen only by hand)
OFFERED_ORDER: tuple[DType, ...] = (*QUALITY_ORDER, DType.Q3_K, DType.Q2_K)
DEFAULT_FORMAT = DType.Q5_K
SMALL_MODEL_FORMAT = DType.Q8_0
SMALL_MODEL_PARAMS = 1_000_000_000
# RSS of the runtime itself: 166 MB measured after loading and running a 1 MB model (llvmlite, JIT,
# thread pool), rounded up for the tokenizer and the Textual app.
PROCESS_OVERHEAD = 256 << 20
GGUF_HEADER_BYTES = 1 << 20  # metadata and alignment padding, generously
_BITS = {DType.F32: 32.0, DType.F16: 16.0}


def n_params(entry: ModelEntry) -> int | None:
    """Parameter count: exact for RWKV-4 with a known shape, else from the checkpoint's size."""
    if entry.arch == "4" and entry.has_shape:
        L, C, V = entry.n_layer, entry.n_embd, entry.vocab
        return 2 * V * C + L * (13 * C * C + 11 * C) + 4 * C
    if entry.size:
        return entry.size // 2  # BlinkDL checkpoints store bf16
    if entry.has_shape:
        return 2 * entry.vocab * entry.n_embd + 13 * entry.n_layer * entry.n_embd**2
    return None


@functools.lru_cache(maxsize=256)
def _v4_file_bytes(n_layer: int, n_embd: int, vocab: int, dtype: DType) -> int:
    """Tensor bytes of a converted RWKV-4 file, following `runtime.convert.output_plan`'s rules."""
    from runtime.formats.detect import v4_tensor_shapes
    from runtime.quant.mixes import Policy, parse_target

    policy = Policy(parse_target(dtype), n_layer)
    total = 0
    for name, shape in v4_tensor_shapes(n_layer, n_embd, vocab).items():
        if ".ln0." in name:  # folded into the embedding by the converter
            continue
        t = policy.matrix(name, shape) if len(shape) == 2 else DType.F32
        total += t.nbytes(shape)
    return total


def file_bytes(entry: ModelEntry, dtype: DType) -> int | None:
    """Size of the converted GGUF in `dtype` (None when the shape is unknown)."""
    if entry.arch == "4" and entry.has_shape:
        return _v4_file_bytes(entry.n_layer, entry.n_embd, entry.vocab, dtype) + GGUF_HEADER_BYTES
    params = n_params(entry)
    if params is None:
        return None
    bits = _BITS.get(dtype, dtype.block_bytes * 8 / dtype.block_size)
    return int(params * bits / 8) + GGUF_HEADER_BYTES


def ram_bytes(entry: ModelEntry, dtype: DType) -> int | None:
    """Memory to run the model in `dtype`: override from the registry, else the estimate above."""
    if dtype in entry.ram:
        return entry.ram[dtype]
    weights = file_bytes(entry, dtype)
    if weights is None or entry.n_layer is None or entry.n_embd is None or entry.vocab is None:
        return weights + PROCESS_OVERHEAD if weights is not None else None
    L, C, V = entry.n_layer, entry.n_embd, entry.vocab
    spec = ModelSpec(L, C, V, 4 * C, (), DType.F16, DType.F16, True)
    vectors = (len(Vec) * L + len(GlobalVec)) * C * 4
    scratch = spec.scratch_floats * 4
    states = 2 * STATE_ROWS * L * C * 4 + V * 4
    return weights + vectors + scratch + states + PROCESS_OVERHEAD


def default_format(entry: ModelEntry) -> DType:
    """The registry's `recommended`, else Q8_0 under 1B parameters, else Q5_K (the q5_k_m mix)."""
    if entry.recommended is not None:
        return entry.recommended
    params = n_params(entry)
    if params is not None and params < SMALL_MODEL_PARAMS:
        return SMALL_MODEL_FORMAT
    return DEFAULT_FORMAT


@dataclass(frozen=True)
class FormatFit:
    dtype: DType
    file_bytes: int | None
    ram_bytes: int | None
    fits_ram: bool | None  # None: unknown (shape not known yet)
    fits_disk: bool | None

    @property
    def fits(self) -> bool | None:
        if self.fits_ram is None or self.fits_disk is None:
            return None
        return self.fits_ram and self.fits_disk


@dataclass(frozen=True)
class Recommendation:
    entry: ModelEntry
    default: DType  # what the rule picks regardless of this machine
    choice: DType  # what to use here: the default if it fits, else the best format that fits
    formats: tuple[FormatFit, ...]  # every offered format, best quality first
    free_ram: int
    free_disk: int
    reason: str

    def fit(self, dtype: DType) -> FormatFit:
        return next(f for f in self.formats if f.dtype is dtype)

    @property
    def fitting(self) -> tuple[DType, ...]:
        return tuple(f.dtype for f in self.formats if f.fits)


def machine_resources(folder: Path) -> tuple[int, int]:
    """(available RAM, free disk in `folder`) in bytes."""
    import psutil

    from runtime.registry.download import disk_free

    return psutil.virtual_memory().available, disk_free(folder)


def recommend(
    entry: ModelEntry,
    *,
    free_ram: int,
    free_disk: int,
    source_present: bool = False,
    converted: frozenset[DType] = frozenset(),
) -> Recommendation:
    """Which formats fit `free_ram` and `free_disk`, and which one to use.

    Disk for a format = its file (unless already converted) + the source download (unless present).
    """
    source = 0 if source_present else (entry.size or file_bytes(entry, DType.F16) or 0)  # a bf16 .pth
    fits = []
    for dtype in OFFERED_ORDER:
        fb = file_bytes(entry, dtype)
        rb = ram_bytes(entry, dtype)
        need_disk = None if fb is None else (0 if dtype in converted else fb) + source
        fits.append(FormatFit(
            dtype, fb, rb,
            None if rb is None else rb <= free_ram,
            None if need_disk is None else need_disk <= free_disk,
        ))
    default = default_format(entry)
    by_type = {f.dtype: f for f in fits}
    if by_type[default].fits is not False:
        choice, reason = default, _why_default(entry, default)
    else:
        better_first = [f for f in fits if f.fits and f.dtype.is_quantized and f.dtype in QUALITY_ORDER]
        if better_first:
            choice = better_first[0].dtype
            reason = f"{default.name} does not fit this machine; {choice.name} is the best format that does"
        else:
            choice = default
            reason = f"no format fits this machine's free memory and disk; {default.name} is the usual choice"
    return Recommendation(entry, default, choice, tuple(fits), free_ram, free_disk, reason)


def _why_default(entry: ModelEntry, dtype: DType) -> str:
    if entry.recommended is not None:
        return "recommended by the registry"
    if dtype is SMALL_MODEL_FORMAT:
        return "small models lose the most to 4- and 5-bit formats, and 8 bits cost little at this size"
    return "less loss than Q5_1 in 8 % fewer bytes, at three quarters of Q8_0's size; 4-bit formats lose 3-5x more"


STARTER_FAMILY = "g1"  # the chat models recommended first (RWKV-7 G1: the newest, and they reason)
STARTER_SHARE = 0.75  # of the free memory a suggested model may take; the rest stays for everything else


# decoding at this rate keeps ahead of a reader (a few words a second), and leaves room for thinking first
STARTER_TOKENS_PER_S = 10.0
# of the compiled memory read a decode step reaches (docs/ARCHITECTURE.md, "K-quants"): 69-75 % for the 1.5B
# files on a Sapphire Rapids VM, 80-92 % for Q4_K-Q6_K and Q5_1 on a Zen 4 one; the lower end
DECODE_SHARE = 0.75


def decode_rate(entry: ModelEntry, dtype: DType, read_gbs: float) -> float | None:
    """Estimated tokens a second decoding `entry` in `dtype` on a machine whose memory read is `read_gbs`:
    a step reads the file's weights but the embedding (one row of it) once, at DECODE_SHARE of the read;
    None if the size is unknown. The embedding's bytes are estimated at `dtype`'s width (the file keeps it
    F16), and never taken as more than half the file, so that an odd shape cannot make a model look free."""
    weights = file_bytes(entry, dtype)
    if weights is None:
        return None
    if entry.vocab and entry.n_embd:
        bits = _BITS.get(dtype, dtype.block_bytes * 8 / dtype.block_size)
        weights = max(weights // 2, weights - int(entry.vocab * entry.n_embd * bits / 8))
    return read_gbs * 1e9 * DECODE_SHARE / weights


def starter_model(entries: Iterable[ModelEntry], *, free_ram: int,
                  read_gbs: float | None = None) -> Recommendation | None:
    """The model to suggest first on this machine: the largest runnable G1 model whose default
    format fits in three quarters of the free memory (so the machine does not start swapping when
    something else needs memory; disk not considered: a download can go elsewhere) and, with
    `read_gbs` (this machine's memory read), decodes at least STARTER_TOKENS_PER_S by `decode_rate`,
    else the smallest that fits; None when none fits or the runtime cannot run G1."""
    fitting: list[Recommendation] = []
    room = int(free_ram * STARTER_SHARE)
    for entry in entries:
        if entry.family != STARTER_FAMILY or not entry.runnable:
            continue
        rec = recommend(entry, free_ram=free_ram, free_disk=1 << 62)
        need = rec.fit(rec.default).ram_bytes
        if need is not None and need <= room:
            fitting.append(rec)
    if not fitting:
        return None
    fitting.sort(key=lambda rec: n_params(rec.entry) or 0)
    if read_gbs is None:
        return fitting[-1]
    fast = [rec for rec in fitting if (decode_rate(rec.entry, rec.choice, read_gbs) or 0) >= STARTER_TOKENS_PER_S]
    return fast[-1] if fast else fitting[0]
