"""Sizes per format against real conversions, the default-format rule, and fitting a machine."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runtime.convert import convert
from runtime.formats.gguf_file import ALIGNMENT, read_gguf
from runtime.quant.types import DType
from runtime.registry.catalog import ModelEntry, load_catalog
from runtime.registry.recommend import (
    GGUF_HEADER_BYTES,
    MEASURED_KL,
    PROCESS_OVERHEAD,
    QUALITY_ORDER,
    default_format,
    file_bytes,
    n_params,
    ram_bytes,
    recommend,
)

GB = 10**9


def tiny_entry(**kw) -> ModelEntry:
    fields = dict(id="tiny", name="Tiny", family="pile", arch="4", file="tiny.pth", url="https://e.org/tiny.pth",
                  n_layer=2, n_embd=64, vocab=256, tokenizer="20b")
    fields.update(kw)
    return ModelEntry(**fields)


@pytest.mark.parametrize("dtype", [DType.F16, DType.Q8_0, DType.Q5_K, DType.Q5_1, DType.Q4_0])
def test_file_size_formula_matches_the_converter(tmp_path, tiny_pth, dtype):
    src = tmp_path / "tiny.pth"
    src.write_bytes(tiny_pth)
    out = convert(src, tmp_path / "t.gguf", dtype)
    predicted = file_bytes(tiny_entry(), dtype) - GGUF_HEADER_BYTES
    g = read_gguf(out.path)
    assert predicted == sum(t.nbytes for t in g.tensors.values())  # every tensor's bytes, exactly
    padding = out.nbytes - g.data_offset - predicted
    assert 0 <= padding < ALIGNMENT * len(g.tensors)  # the rest is the header and alignment


def test_parameter_count_of_known_models():
    cat = load_catalog()
    assert abs(n_params(cat.get("pile-169m")) - 169.3e6) < 0.1e6
    assert abs(n_params(cat.get("raven-7b")) - 7.39e9) < 0.01e9
    v7 = cat.get("pile7-168m")  # no size recorded, so estimated from the shape
    assert v7.size is None and 1.3e8 < n_params(v7) < 2.0e8


def test_default_format_rule():
    cat = load_catalog()
    assert default_format(cat.get("pile-169m")) is DType.Q8_0  # < 1B parameters
    assert default_format(cat.get("world4-0.4b")) is DType.Q8_0
    assert default_format(cat.get("raven-1b5")) is DType.Q5_K  # the q5_k_m mix
    assert default_format(cat.get("raven-14b")) is DType.Q5_K
    assert default_format(replace(cat.get("raven-14b"), recommended=DType.Q4_1)) is DType.Q4_1
    # RWKV-7 follows the same rule (its quality table orders the formats as RWKV-4's does)
    assert [default_format(cat.get(f"g1-{size}")) for size in ("0.1b", "0.4b", "1.5b", "2.9b", "7.2b", "13.3b")] == [
        DType.Q8_0, DType.Q8_0, DType.Q5_K, DType.Q5_K, DType.Q5_K, DType.Q5_K]
    assert default_format(cat.get("pile7-168m")) is DType.Q8_0  # no size: parameters from the shape


def test_the_default_is_smaller_than_q5_1_with_no_more_measured_loss():
    """Q5_K (q5_k_m) replaced Q5_1 as the default above 1B because the quality tables measured it smaller
    with less KL; the automatic choice goes by the measured KL."""
    e = load_catalog().get("raven-1b5")
    assert file_bytes(e, DType.Q5_K) < 0.95 * file_bytes(e, DType.Q5_1)
    assert MEASURED_KL[DType.Q5_K] <= MEASURED_KL[DType.Q5_1]
    measured = [t for t in QUALITY_ORDER if t in MEASURED_KL]
    assert [MEASURED_KL[t] for t in measured] == sorted(MEASURED_KL[t] for t in measured)
    assert set(measured) == set(MEASURED_KL)


def test_ram_estimate_parts_and_override():
    e = load_catalog().get("raven-7b")
    q5 = ram_bytes(e, DType.Q5_1)
    assert file_bytes(e, DType.Q5_1) + PROCESS_OVERHEAD < q5 < file_bytes(e, DType.Q5_1) + PROCESS_OVERHEAD + 0.1 * GB
    assert ram_bytes(e, DType.Q4_0) < q5 < ram_bytes(e, DType.Q8_0) < ram_bytes(e, DType.F16)
    assert 5.5 * GB < file_bytes(e, DType.Q5_1) < 6.0 * GB  # 5 bits + the Q8_0 head + F16 embedding
    assert ram_bytes(replace(e, ram={DType.Q5_1: 123}), DType.Q5_1) == 123


def test_recommendation_follows_free_memory_and_disk():
    e = load_catalog().get("raven-7b")
    need = {t: ram_bytes(e, t) for t in (DType.Q8_0, DType.Q5_K, DType.Q5_1, DType.Q4_K, DType.Q4_1)}
    roomy = recommend(e, free_ram=100 * GB, free_disk=100 * GB)
    assert roomy.choice is DType.Q5_K and roomy.default is DType.Q5_K
    assert set(roomy.fitting) >= {DType.Q8_0, DType.Q5_K, DType.Q5_1, DType.Q4_0}

    tight = recommend(e, free_ram=need[DType.Q4_K] + 1, free_disk=100 * GB)
    assert tight.choice is DType.Q4_K and "does not fit" in tight.reason  # less loss than Q4_1 and Q4_0
    assert tight.fit(DType.Q5_K).fits_ram is False and tight.fit(DType.Q4_K).fits is True

    none = recommend(e, free_ram=1 * GB, free_disk=100 * GB)
    assert none.choice is DType.Q5_K and "no format fits" in none.reason and none.fitting == ()

    # disk: the 14.8 GB source plus the converted file must fit, unless the source is already here
    q5_file = file_bytes(e, DType.Q5_1)
    short = recommend(e, free_ram=100 * GB, free_disk=e.size + q5_file - 1)
    assert short.fit(DType.Q5_1).fits_disk is False and short.fit(DType.Q4_0).fits_disk is True
    have_source = recommend(e, free_ram=100 * GB, free_disk=q5_file, source_present=True)
    assert have_source.fit(DType.Q5_1).fits_disk is True
    converted = recommend(e, free_ram=100 * GB, free_disk=0, source_present=True, converted=frozenset({DType.Q5_1}))
    assert converted.fit(DType.Q5_1).fits and converted.choice is DType.Q5_1


def test_unknown_shape_gives_unknown_fit():
    e = tiny_entry(n_layer=None, n_embd=None, vocab=None, tokenizer=None)
    r = recommend(e, free_ram=100 * GB, free_disk=100 * GB)
    assert r.fit(DType.Q5_K).fits is None and r.choice is DType.Q5_K


def test_the_starter_model_is_the_largest_g1_that_fits_the_free_memory(monkeypatch):
    from runtime.registry import catalog as catalog_module
    from runtime.registry.recommend import starter_model

    entries = list(load_catalog().models.values())
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4",))
    assert starter_model(entries, free_ram=64 << 30) is None  # G1 not runnable: nothing to suggest
    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    g1 = sorted((e for e in entries if e.family == "g1"), key=n_params)
    assert starter_model(entries, free_ram=100 << 20) is None  # not even the smallest fits
    for gib in (1, 3, 6, 12, 64):
        free = gib << 30
        rec = starter_model(entries, free_ram=free)
        assert rec.entry.family == "g1" and rec.choice is default_format(rec.entry)
        assert ram_bytes(rec.entry, rec.choice) <= 0.75 * free  # a quarter stays for the rest of the machine
        larger = g1[g1.index(rec.entry) + 1:]
        assert all(ram_bytes(e, default_format(e)) > 0.75 * free for e in larger), (gib, rec.entry.id)
    assert starter_model(entries, free_ram=64 << 30).entry.id == "g1-13.3b"


def test_the_starter_model_answers_at_a_readable_speed_where_the_memory_read_is_known(monkeypatch):
    """With this machine's memory read, the starter is the largest G1 that fits and decodes at least
    STARTER_TOKENS_PER_S by decode_rate; where none that fits is that fast, the smallest that fits."""
    from runtime.registry import catalog as catalog_module
    from runtime.registry.recommend import STARTER_TOKENS_PER_S, decode_rate, starter_model

    monkeypatch.setattr(catalog_module, "RUNNABLE_VERSIONS", ("4", "7"))
    entries = list(load_catalog().models.values())
    g1 = sorted((e for e in entries if e.family == "g1"), key=n_params)
    free = 64 << 30  # every G1 fits: only the speed decides
    picked = []
    for read in (15.0, 30.0, 60.0, 150.0):
        rec = starter_model(entries, free_ram=free, read_gbs=read)
        assert decode_rate(rec.entry, rec.choice, read) >= STARTER_TOKENS_PER_S
        larger = g1[g1.index(rec.entry) + 1:]
        assert all(decode_rate(e, default_format(e), read) < STARTER_TOKENS_PER_S for e in larger), (read, rec.entry.id)
        picked.append(n_params(rec.entry))
    assert picked == sorted(picked) and picked[0] < picked[-1]  # a faster machine gets a larger model
    assert starter_model(entries, free_ram=free, read_gbs=0.5).entry == g1[0]  # nothing is fast: the smallest
    assert starter_model(entries, free_ram=free, read_gbs=1e4).entry.id == "g1-13.3b"
    # memory still bounds it: a fast machine with 3 GiB free gets what fits, not 13.3B
    small = starter_model(entries, free_ram=3 << 30, read_gbs=1e4)
    assert small.entry == starter_model(entries, free_ram=3 << 30).entry
    assert starter_model(entries, free_ram=100 << 20, read_gbs=30.0) is None  # not even the smallest fits


def test_decode_rate_follows_the_memory_read_and_the_bytes_a_step_reads():
    from runtime.registry.recommend import DECODE_SHARE, decode_rate, file_bytes

    entry = next(e for e in load_catalog().models.values() if e.id == "g1-1.5b")
    q5k, q8 = decode_rate(entry, DType.Q5_K, 30.0), decode_rate(entry, DType.Q8_0, 30.0)
    assert decode_rate(entry, DType.Q5_K, 60.0) == pytest.approx(2 * q5k)
    assert q8 < q5k  # more bytes a token
    # the embedding is read one row a token, so a step reads less than the file and decodes faster than it
    whole_file = 30e9 * DECODE_SHARE / file_bytes(entry, DType.Q5_K)
    assert whole_file < q5k < 1.5 * whole_file
    assert decode_rate(tiny_entry(n_layer=None, n_embd=None, vocab=None, tokenizer=None, size=None), DType.Q5_K,
                       30.0) is None
