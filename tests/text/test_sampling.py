"""Sampling: the native kernel against a numpy reference of the official semantics, the draw's
distribution, penalties with decay and exempt tokens, bans, top-k, greedy, seeds, snapshots, settings."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from runtime.jit.kernels.sample import EXP_MIN
from runtime.text.sampling import (
    MIN_TEMPERATURE,
    Sampler,
    SamplerSnapshot,
    SamplingError,
    SamplingSettings,
    penalty_exempt,
    penalty_weights,
)

# Relative margins below which the kernel's float32 arithmetic (and its own exp) could decide
# differently from this float64 reference: e = exp(x - m) is within ~4e-6 relative, tempered
# weights within ~1.5e-5.
EPS_E = 2e-5
EPS_W = 1e-4


def reference(logits, counts, settings, u):
    """The official algorithm in float64 with a sort. Returns the set of acceptable tokens: one token,
    or a few where a decision sits within rounding distance of flipping (the kernel works in float32
    with its own exp), each alternative followed through."""
    x = np.array(logits, dtype=np.float32)
    for tok, c in counts.items():
        amount = settings.presence_penalty + c * settings.frequency_penalty
        x[tok] = np.float32(np.float64(x[tok]) - amount)
    x[list(settings.banned_tokens)] = -np.inf
    m = x.max()
    n = len(x)
    if settings.temperature < MIN_TEMPERATURE or settings.top_p <= 0 or settings.top_k == 1:
        ties = np.flatnonzero(x == m)
        return {int(ties[min(int(u * len(ties)), len(ties) - 1)])}
    d = x.astype(np.float64) - np.float64(m)
    alive = d >= EXP_MIN
    e = np.where(alive, np.exp(np.where(alive, d, 0.0)), 0.0)
    total = e.sum()
    s = np.sort(e)[::-1]

    def values_near(i):
        """s[i], and a neighbour that differs from it by less than the kernel's rounding."""
        out = {s[i]}
        for j in (i - 1, i + 1):
            if 0 <= j < n and abs(s[j] - s[i]) <= EPS_E * s[i]:
                out.add(s[j])
        return out

    cuts_p = {0.0}
    if settings.top_p < 1:
        target = settings.top_p * total
        cum = np.cumsum(s)
        k = int(np.argmax(cum >= target))
        ks = {k}
        if cum[k] - target <= EPS_E * total and k + 1 < n:
            ks.add(k + 1)
        if k > 0 and target - cum[k - 1] <= EPS_E * total:
            ks.add(k - 1)
        cuts_p = set().union(*(values_near(i) for i in ks))
    cuts_k = values_near(settings.top_k - 1) if 0 < settings.top_k < n else {0.0}
    tokens = set()
    for cut in {max(a, b) for a in cuts_p for b in cuts_k}:
        keep = (e >= cut) & (e > 0)
        w = np.where(keep, np.exp(np.where(keep, d, 0.0) / settings.temperature), 0.0)
        cw = np.cumsum(w)
        for point in {u, max(0.0, u - EPS_W), min(u + EPS_W, 1 - 1e-12)}:
            tokens.add(int(np.searchsorted(cw, point * cw[-1], side="right")))
    return tokens


def make_sampler(n, seed=0, weights=None, **settings):
    return Sampler(SamplingSettings(**settings), n, np.ones(n) if weights is None else weights, seed=seed)


def set_counts(sampler, counts):
    state = sampler.snapshot()
    sampler.restore(SamplerSnapshot(sampler.n_vocab, tuple(counts), tuple(counts.values()), state.rng_state))


def random_logits(rng, n):
    kind = rng.integers(5)
    if kind == 0:
        x = rng.standard_normal(n) * rng.choice([0.3, 1.0, 3.0, 6.0])
    elif kind == 1:  # language-model-like: a broad floor and a few strong candidates
        x = rng.standard_normal(n) * 2.0
        hot = rng.choice(n, size=max(1, n // 500), replace=False)
        x[hot] += rng.uniform(4, 12, size=len(hot))
    elif kind == 2:  # coarse values: many exact ties
        x = np.round(rng.standard_normal(n) * 2.0)
    elif kind == 3:  # some -inf entries
        x = rng.standard_normal(n) * 2.0
        x[rng.random(n) < 0.3] = -np.inf
        x[rng.integers(n)] = 1.0
    else:
        x = rng.uniform(-30, 5, size=n)
    return x.astype(np.float32)


def random_settings(rng, n):
    top_k = int(rng.choice([0, 0, 0, 1, 2, 5, 50, max(1, n - 1), n, n + 3]))
    banned = tuple(int(t) for t in rng.choice(n, size=min(n - 1, int(rng.integers(0, 4))), replace=False))
    return SamplingSettings(
        temperature=float(rng.choice([0.0, 1e-5, 0.25, 0.7, 1.0, 1.0, 1.3, 2.5])),
        top_p=float(rng.choice([0.0, 0.05, 0.3, 0.3, 0.5, 0.85, 0.999, 1.0])),
        top_k=top_k,
        presence_penalty=float(rng.choice([0.0, 0.4, -0.3])),
        frequency_penalty=float(rng.choice([0.0, 0.4, 1.5])),
        banned_tokens=banned,
    )


@pytest.mark.parametrize("sizes", [
    [1, 2, 3, 7, 8, 9, 31, 32, 33, 64, 100, 257],
    [1000, 4099],
    [50277, 65536],
])
def test_kernel_matches_reference(sizes):
    rng = np.random.default_rng(sum(sizes))
    cases = 240 if sizes[0] < 1000 else 60 if sizes[0] < 10000 else 24
    compared = ambiguous = 0
    for case in range(cases):
        n = int(sizes[case % len(sizes)])
        x = random_logits(rng, n)
        settings = random_settings(rng, n)
        sampler = Sampler(settings, n, np.ones(n), seed=case)
        counts = {int(t): float(rng.choice([0.0, 0.5, 1.0, 3.0]))
                  for t in rng.choice(n, size=min(n, int(rng.integers(0, 6))), replace=False)}
        set_counts(sampler, counts)
        if np.all(np.isneginf(x) | np.isin(np.arange(n), settings.banned_tokens)):
            with pytest.raises(SamplingError, match="banned"):
                sampler.choose(x, 0.5)
            continue
        for u in (0.0, float(rng.random()), float(rng.random()), 0.999999):
            want = reference(x, counts, settings, u)
            got = sampler.choose(x, u)
            assert got in want, f"case {case}: n={n} {settings} counts={counts} u={u}"
            compared += 1
            ambiguous += len(want) > 1
    assert compared >= 3 * cases and ambiguous <= compared // 5, (compared, ambiguous)


def test_draw_follows_the_distribution_exactly_on_a_grid():
    """u on an even grid lands in each token's interval in proportion to its probability."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(40).astype(np.float32) * 1.5
    for settings in (SamplingSettings(top_p=1.0, temperature=1.0), SamplingSettings(top_p=0.6, temperature=0.7),
                     SamplingSettings(top_p=1.0, temperature=1.8, top_k=9)):
        sampler = Sampler(settings, len(x), np.ones(len(x)), seed=0)
        grid = 4000
        hits = np.bincount([sampler.choose(x, (i + 0.5) / grid) for i in range(grid)], minlength=len(x))
        probs = expected_probs(x, settings)
        assert np.all(np.abs(hits - probs * grid) <= 1.01)
        assert np.all(hits[probs == 0] == 0)


def expected_probs(x, settings):
    """The distribution a draw follows (no penalties): tempered weights of the tokens top-p and
    top-k keep, renormalised (the official algorithm, sorted, in float64)."""
    d = x.astype(np.float64) - x.max()
    e = np.exp(d)
    s = np.sort(e)[::-1]
    cut = s[int(np.argmax(np.cumsum(s) >= settings.top_p * e.sum()))] if settings.top_p < 1 else 0.0
    if 0 < settings.top_k < len(x):
        cut = max(cut, s[settings.top_k - 1])
    w = np.where(e >= cut, np.exp(d / settings.temperature), 0.0)
    return w / w.sum()


def test_sample_frequencies_match_probabilities():
    x = np.array([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, 0.9], dtype=np.float32)
    settings = SamplingSettings(temperature=0.8, top_p=0.9, presence_penalty=0.0, frequency_penalty=0.0)
    sampler = Sampler(settings, len(x), np.ones(len(x)), seed=12345)
    draws = 20000
    hits = np.bincount([sampler.sample(x) for _ in range(draws)], minlength=len(x))
    probs = expected_probs(x, settings)
    assert np.all(hits[probs == 0] == 0)
    live = probs > 0
    chi2 = float(np.sum((hits[live] - draws * probs[live]) ** 2 / (draws * probs[live])))
    assert chi2 < 40.0  # 7 degrees of freedom: p < 1e-6 beyond this


def test_ties_at_the_top_p_cutoff_are_kept():
    # probabilities 0.4, 0.2, 0.2, 0.2 (by logits); top_p 0.5 reaches 0.5 inside the tie: all three stay
    x = np.log(np.array([0.4, 0.2, 0.2, 0.2, 1e-9], dtype=np.float64)).astype(np.float32)
    sampler = make_sampler(5, top_p=0.5, presence_penalty=0.0, frequency_penalty=0.0)
    seen = {sampler.choose(x, (i + 0.5) / 100) for i in range(100)}
    assert seen == {0, 1, 2, 3}
    sampler.settings = sampler.settings.replace(top_p=0.35)  # reached at the first token
    assert {sampler.choose(x, (i + 0.5) / 100) for i in range(100)} == {0}


def test_top_k_keeps_the_k_most_probable():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(1000).astype(np.float32)
    sampler = make_sampler(1000, top_p=1.0, top_k=3, temperature=2.0, presence_penalty=0.0, frequency_penalty=0.0)
    seen = {sampler.choose(x, (i + 0.5) / 300) for i in range(300)}
    assert seen == set(np.argsort(x)[-3:].tolist())


def test_greedy_settings_pick_the_maximum():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(5000).astype(np.float32)
    best = int(np.argmax(x))
    for changes in ({"temperature": 0.0}, {"temperature": MIN_TEMPERATURE / 2}, {"top_p": 0.0}, {"top_k": 1}):
        sampler = make_sampler(5000, **changes)
        assert {sampler.choose(x, u) for u in (0.0, 0.3, 0.999)} == {best}
    ties = np.zeros(10, dtype=np.float32)
    ties[[2, 5, 7]] = 1.0
    sampler = make_sampler(10, temperature=0.0)
    assert [sampler.choose(ties, u) for u in (0.0, 0.34, 0.67, 0.99)] == [2, 5, 7, 7]


def test_bans():
    x = np.array([5.0, 1.0, 0.5, 4.0], dtype=np.float32)
    sampler = make_sampler(4, banned_tokens=(0,), temperature=0.0)
    assert sampler.choose(x, 0.5) == 3
    sampler.settings = sampler.settings.replace(temperature=1.0, top_p=1.0)
    assert 0 not in {sampler.choose(x, (i + 0.5) / 200) for i in range(200)}
    sampler.settings = sampler.settings.replace(banned_tokens=(0, 1, 2, 3))
    with pytest.raises(SamplingError, match="banned"):
        sampler.choose(x, 0.5)
    with pytest.raises(SamplingError, match="outside the vocabulary"):
        sampler.settings = SamplingSettings(banned_tokens=(4,))


# ---------------------------------------------------------------------------------------------
# Penalties
# ---------------------------------------------------------------------------------------------

FAKE_VOCAB = ["", " ", "\t", "0", "12", "789", " \t0", "\n", "  ", "00", "21", " 1", "a", "the", "7 ", "\t "]


def test_exempt_rule_is_the_official_substring_test():
    exempt = {"", " ", "\t", "0", "12", "789", " \t0"}
    for text in FAKE_VOCAB:
        assert penalty_exempt(text) == (text in exempt), repr(text)
        assert penalty_exempt(text) == (text in " \t0123456789")


class FakeTokenizer:
    def __init__(self, name, table):
        self.name, self.table, self.n_vocab, self.calls = name, table, len(table), 0

    def decode(self, ids):
        self.calls += 1
        return "".join(self.table[i] for i in ids)


def test_penalty_weights_from_decode_and_cached_by_name():
    tok = FakeTokenizer("fake-sampling-vocab", FAKE_VOCAB)
    weights = penalty_weights(tok)
    assert weights.tolist() == [0.0 if penalty_exempt(t) else 1.0 for t in FAKE_VOCAB]
    calls = tok.calls
    assert penalty_weights(tok) is weights and tok.calls == calls


def official_counts(tokens, weights, decay):
    """PIPELINE.generate's bookkeeping, written out."""
    occurrence = {}
    for token in tokens:
        for k in occurrence:
            occurrence[k] *= decay
        occurrence[token] = occurrence.get(token, 0) + weights[token]
    return occurrence


def test_counts_decay_and_exempt_tokens():
    weights = [0.0 if penalty_exempt(t) else 1.0 for t in FAKE_VOCAB]
    n = len(FAKE_VOCAB)
    rng = random.Random(1)
    tokens = [rng.randrange(n) for _ in range(300)]
    for decay in (0.996, 0.5, 1.0, 0.0):
        sampler = make_sampler(n, weights=weights, penalty_decay=decay)
        for t in tokens:
            sampler.record(t)
        want = official_counts(tokens, weights, decay)
        got = sampler.counts()
        assert got.keys() == want.keys()
        for k in want:
            assert math.isclose(got[k], want[k], rel_tol=1e-12, abs_tol=1e-300)


def test_penalties_change_the_choice():
    # token 12 ("a", penalised) vs token 3 ("0", exempt) vs token 13 ("the")
    weights = [0.0 if penalty_exempt(t) else 1.0 for t in FAKE_VOCAB]
    x = np.full(len(FAKE_VOCAB), -5.0, dtype=np.float32)
    x[[12, 3, 13]] = [1.0, 0.95, 0.8]
    sampler = make_sampler(len(x), weights=weights, temperature=0.0, presence_penalty=0.1, frequency_penalty=0.5)
    sampler.record(3)  # exempt: presence only, 0.95 - 0.1 = 0.85 > 0.8
    assert sampler.choose(x, 0.0) == 12
    sampler.record(12)  # penalised: 1.0 - 0.6 = 0.4; token 3 still 0.85
    assert sampler.choose(x, 0.0) == 3
    sampler.reset()
    assert sampler.counts() == {} and sampler.choose(x, 0.0) == 12


def test_callable_weight_is_asked_per_generated_token():
    asked = []

    def weight(token):
        asked.append(token)
        return 0.0 if token == 2 else 1.0

    sampler = Sampler(SamplingSettings(penalty_decay=1.0), 5, weight, seed=1)
    for t in (2, 4, 4):
        sampler.record(t)
    assert asked == [2, 4, 4] and sampler.counts() == {2: 0.0, 4: 2.0}
    bad = Sampler(SamplingSettings(), 5, lambda t: -1.0, seed=1)
    with pytest.raises(SamplingError, match="penalty weight"):
        bad.record(0)


# ---------------------------------------------------------------------------------------------
# Seeds, snapshots, inputs
# ---------------------------------------------------------------------------------------------


def fake_model(token, n=3000):
    """Deterministic logits that depend on the previous token."""
    return np.random.default_rng(token).standard_normal(n).astype(np.float32) * 3


def generate(sampler, start, count):
    out, token = [], start
    for _ in range(count):
        token = sampler.sample(fake_model(token))
        out.append(token)
    return out


def test_same_seed_same_tokens():
    settings = SamplingSettings(temperature=1.2, top_p=0.7)
    a = generate(Sampler(settings, 3000, np.ones(3000), seed=42), 0, 40)
    b = generate(Sampler(settings, 3000, np.ones(3000), seed=42), 0, 40)
    c = generate(Sampler(settings, 3000, np.ones(3000), seed=43), 0, 40)
    assert a == b and a != c


def test_snapshot_restore_replays():
    sampler = Sampler(SamplingSettings(temperature=1.2, top_p=0.8), 3000, np.ones(3000), seed=7)
    generate(sampler, 0, 20)
    snap = sampler.snapshot()
    counts = sampler.counts()
    first = generate(sampler, 1, 20)
    assert sampler.counts() != counts
    sampler.restore(snap)
    assert sampler.counts() == counts
    assert generate(sampler, 1, 20) == first
    other = Sampler(SamplingSettings(), 10, np.ones(10))
    with pytest.raises(SamplingError, match="different vocabulary"):
        other.restore(snap)


def test_inputs_are_checked_and_never_modified():
    sampler = make_sampler(100, presence_penalty=2.0, banned_tokens=(3,))
    x = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    sampler.record(int(np.argmax(x)))
    before = x.copy()
    sampler.choose(x, 0.5)
    assert np.array_equal(x, before)
    as_f64 = np.random.default_rng(1).standard_normal(200)[::2]  # float64, not contiguous
    assert sampler.choose(as_f64, 0.3) == sampler.choose(np.ascontiguousarray(as_f64, dtype=np.float32), 0.3)
    with pytest.raises(SamplingError, match="expected 100 logits"):
        sampler.choose(np.zeros(99, dtype=np.float32), 0.5)
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[50] = bad
        with pytest.raises(SamplingError, match="NaN or infinite"):
            sampler.choose(y, 0.5)


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


def test_settings_round_trip_and_defaults():
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.top_k, s.presence_penalty, s.frequency_penalty, s.penalty_decay) == \
        (1.0, 0.3, 0, 0.4, 0.4, 0.996)
    custom = s.replace(top_k=40, banned_tokens=[0, 187], stop=["\n\nUser:"])
    assert custom.banned_tokens == (0, 187) and custom.stop == ("\n\nUser:",)
    assert SamplingSettings.from_dict(custom.to_dict()) == custom
    assert SamplingSettings.from_dict({"temperature": 1, "top_k": 0}).temperature == 1.0  # TOML integers


@pytest.mark.parametrize("changes, key", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"penalty_decay": 1.2}, "penalty_decay"),
    ({"presence_penalty": "high"}, "presence_penalty"),
    ({"temperature": True}, "temperature"),
    ({"banned_tokens": [-1]}, "banned_tokens"),
    ({"stop": "\n\n"}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"temprature": 1.0}, "temprature"),
])
def test_bad_settings_name_the_key(changes, key):
    with pytest.raises(SamplingError, match=key) as info:
        SamplingSettings.from_dict(changes)
    assert isinstance(info.value, ValueError)


def test_set_parses_text():
    s = SamplingSettings()
    assert s.set("temperature", "0.8").temperature == 0.8
    assert s.set("top-k", " 40 ").top_k == 40
    assert s.set("temp", "1.5").temperature == 1.5
    assert s.set("banned_tokens", "0, 187 535").banned_tokens == (0, 187, 535)
    assert s.set("banned_tokens", "0").set("banned_tokens", "none").banned_tokens == ()
    assert s.set("stop", r"\n\nUser:").stop == ("\n\nUser:",)
    assert s.set("stop", '["\\n\\nBob:", "END"]').stop == ("\n\nBob:", "END")
    assert s.set("max_tokens", "200").max_tokens == 200
    with pytest.raises(SamplingError, match="temperature must be a number"):
        s.set("temperature", "warm")
    with pytest.raises(SamplingError, match="top_k must be a whole number"):
        s.set("top_k", "4.5")
    with pytest.raises(SamplingError, match="top_p must be between 0 and 1"):
        s.set("top_p", "3")
    with pytest.raises(SamplingError, match="unknown sampling setting 'warmth'"):
        s.set("warmth", "1")
