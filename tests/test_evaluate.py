"""`runtime.eval` and `rwkv-tui eval`: quality figures against direct numpy computations.

The expected figures are computed here from logits gathered independently (one `forward` call per
token, or the numpy oracle, or the official implementation's recorded logits) with plain formulas
(softmax, sum p·log(p/q)), so an off-by-one between logits and next tokens, a wrong KL direction or
a chunking slip in the evaluator shows up as a mismatch. The evaluator reads the text in sequence
mode (`forward_all`); decoding a quantized matrix one token at a time may quantize the activations
to int16 (matvec_int16.py), so figures of quantized files agree to RTOL_QUANTIZED, while float
files agree to RTOL_FLOAT: the two paths add in different orders (512-bit vectors when decoding on
AVX-512 hosts), and a KL near 1e-6 is a difference of nearly equal sums, so float rounding moves it
by up to about 1e-4 of itself (7e-5 seen); an off-by-one moves the figures by orders of magnitude.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from contextlib import contextmanager

import numpy as np
import pytest

from runtime.convert import convert
from runtime.errors import ModelFileError
from runtime.eval import (
    EvalError,
    Scores,
    evaluate,
    evaluate_formats,
    evaluation_for,
    load_evaluations,
    store_path,
)
from runtime.eval.run import CHUNK
from runtime.model.model import load_model
from runtime.progress import CancelToken
from runtime.quant.types import DType
from tests.support import numpy_rwkv
from tests.support.gguf_model import write_model_gguf
from tests.support.reference import load_reference, load_reference_v7, read_pth_arrays
from tests.support.rwkvcpp_writer import write_v7_model, write_v56_model
from tests.support.synthetic import v4_state_dict, v7_state_dict, v56_state_dict
from tui.cli import main

N_VOCAB = 320  # the "tiny" fixture's shape, so the compiled forward functions are shared
N_TOKENS = CHUNK + 9  # crosses a scoring-chunk boundary


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    sd = v4_state_dict(n_layer=2, n_embd=64, n_vocab=N_VOCAB, seed=11)
    sd["head.weight"] *= 6.0  # peaked distributions, so quantization moves top-1 and KL measurably
    ref = write_model_gguf(d / "ref-f32.gguf", sd, DType.F32)
    q4 = write_model_gguf(d / "m-q4_0.gguf", sd, DType.Q4_0, head=DType.Q8_0, emb=DType.F16)
    q8 = write_model_gguf(d / "m-q8_0.gguf", sd, DType.Q8_0, emb=DType.F16)
    f16 = write_model_gguf(d / "m-f16.gguf", sd, DType.F16, emb=DType.F16)
    tokens = np.random.default_rng(3).integers(0, N_VOCAB, N_TOKENS)
    tok_file = d / "ids.txt"
    tok_file.write_text(" ".join(map(str, tokens)) + "\n")
    return {"sd": sd, "ref": ref, "q4": q4, "q8": q8, "f16": f16, "tokens": tokens, "tok_file": tok_file, "dir": d}


def _decode_all(path, tokens) -> np.ndarray:
    """(T-1, V) float64 logits after each of tokens[:-1], one forward call per token."""
    with load_model(path, threads=2) as model:
        state, rows = model.new_state(), []
        for tok in tokens[:-1]:
            logits, state = model.forward([int(tok)], state)
            rows.append(logits.astype(np.float64))
    return np.array(rows)


def _expected(logits: np.ndarray, ref: np.ndarray, tokens: np.ndarray) -> dict[str, float]:
    """The figures by the textbook formulas: softmax, cross-entropy of the next token, KL(ref ‖ model)."""
    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(logits - logits.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    nxt = tokens[1 : len(logits) + 1]
    kl = np.sum(p * np.log(p / q), axis=1)
    return {
        "perplexity": float(np.exp(-np.mean(np.log(q[np.arange(len(q)), nxt])))),
        "kl_mean": float(kl.mean()),
        "kl_p99": float(np.percentile(kl, 99)),
        "top1": float(np.mean(q.argmax(1) == p.argmax(1))),
        "max_logit_diff": float(np.abs(logits - ref).max()),
    }


RTOL_FLOAT = 3e-4
RTOL_QUANTIZED = 1e-2
# eval reads in sequence mode (matrix x matrix) and the direct computation decodes one token at a
# time (matrix x vector): the logits differ by float rounding in the summation order. For a float
# file the KL itself is ~1e-6, a difference of nearly equal sums, so that rounding moves it by up to
# ~0.1 % of itself (Sapphire Rapids: kl_p99 5.177e-6 against 5.182e-6); an off-by-one position or a
# wrong distribution moves it by orders of magnitude, which 1 % still catches.
RTOL_KL = 1e-2


def _check(result, want: dict[str, float], rtol: float = RTOL_QUANTIZED) -> None:
    for key, value in want.items():
        tol = max(rtol, RTOL_KL) if key.startswith("kl_") else rtol
        assert getattr(result, key) == pytest.approx(value, rel=tol, abs=1e-12), key


def test_figures_match_a_direct_computation(files):
    tokens = files["tokens"]
    paths = (files["f16"], files["q4"], files["q8"])
    report = evaluate(list(paths), files["ref"], tokens.tolist(), threads=2, save=False)
    ref_logits = _decode_all(files["ref"], tokens)
    assert not report.partial and report.positions_wanted == N_TOKENS - 1
    for result, path in zip(report.results, paths, strict=True):
        assert result.positions == N_TOKENS - 1
        rtol = RTOL_FLOAT if path == files["f16"] else RTOL_QUANTIZED
        _check(result, _expected(_decode_all(path, tokens), ref_logits, tokens), rtol)
        assert (result.matrices, result.path) == (path.name.split("-")[1].split(".")[0].upper(), str(path))
    f16, q4, q8 = report.results
    assert q4.kl_mean > q8.kl_mean > f16.kl_mean > 0 and q4.top1 < 1.0  # the measurement sees quantization
    # the reference's own perplexity, against the float64 numpy oracle of the same weights
    oracle, _ = numpy_rwkv.forward_each(files["sd"], [int(t) for t in tokens[:-1]])
    want = _expected(oracle.astype(np.float64), oracle.astype(np.float64), tokens)["perplexity"]
    assert report.reference.perplexity == pytest.approx(want, rel=1e-4)
    assert report.reference.is_reference and report.reference.kl_mean == 0.0


def test_scores_are_independent_of_chunking():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 30)) * 3, rng.normal(size=(50, 30)) * 3
    targets = rng.integers(0, 30, 50)
    whole, pieces = Scores(), Scores()
    whole.add(a, targets, b)
    for lo, hi in ((0, 7), (7, 8), (8, 50)):
        pieces.add(a[lo:hi], targets[lo:hi], b[lo:hi])
    for key in ("perplexity", "kl_mean", "kl_p99", "top1", "max_logit_diff"):
        assert getattr(pieces, key) == pytest.approx(getattr(whole, key), rel=1e-12)
    shifted = Scores()  # softmax ignores a constant shift; the raw logit difference does not
    shifted.add(b + 2.5, targets, b)
    assert shifted.kl_mean == pytest.approx(0.0, abs=1e-12) and shifted.top1 == 1.0
    assert shifted.max_logit_diff == pytest.approx(2.5)


def test_reference_perplexity_from_a_checkpoint_matches_the_official_logits(tmp_path):
    """A .pth reference is converted to a temporary F32 file; the official package's logits agree."""
    ref = load_reference("tiny")
    tokens = ref.tokens.astype(np.int64)
    report = evaluate_formats(ref.pth_path, ["f32", "q8_0"], tokens.tolist(), threads=2, work_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # temporary conversions deleted
    official = ref.logits_decode[: len(tokens) - 1].astype(np.float64)
    want = _expected(official, official, tokens)["perplexity"]
    assert report.reference.perplexity == pytest.approx(want, rel=1e-3)
    f32, q8 = report.results
    assert (f32.label, f32.path, q8.label, q8.matrices) == ("f32", None, "q8_0", "Q8_0")
    assert f32.kl_mean == 0.0 and f32.top1 == 1.0 and f32.max_logit_diff == 0.0  # the same file
    assert q8.kl_mean > 0.0
    assert not any(k.startswith(str(tmp_path)) for k in load_evaluations())  # temporary copies not saved


def test_cancel_returns_partial_figures(files):
    tokens = files["tokens"]
    cancel, stop_at = CancelToken(), CHUNK  # progress comes once per chunk of CHUNK positions

    def progress(event):
        if event.what.endswith(files["q4"].name) and event.done == stop_at:
            cancel.cancel()

    report = evaluate([files["q4"], files["q8"]], files["ref"], tokens.tolist(), threads=2, cancel=cancel,
                      progress=progress)
    assert report.cancelled and report.partial
    q4, q8 = report.results
    assert (q4.positions, q8.positions, report.reference.positions) == (stop_at, 0, stop_at)
    assert q4.partial and np.isnan(q8.kl_mean)
    want = _expected(_decode_all(files["q4"], tokens)[:stop_at], _decode_all(files["ref"], tokens)[:stop_at],
                     tokens)
    _check(q4, want)
    assert evaluation_for(files["q4"]) is None  # partial figures are never saved


def test_results_are_saved_for_the_app(files, tmp_path):
    path = tmp_path / "copy-q8_0.gguf"
    path.write_bytes(files["q8"].read_bytes())
    report = evaluate([path], files["ref"], files["tokens"].tolist(), threads=2, text_label="ids.txt")
    saved = evaluation_for(path)
    assert saved is not None and saved == report.results[0]
    assert saved.text == "ids.txt" and saved.reference == "ref-f32.gguf"
    assert str(path.resolve()) in load_evaluations()
    os.utime(path, ns=(0, 0))  # the file changed since it was measured
    assert evaluation_for(path) is None
    store_path().write_text("{not json")
    assert load_evaluations() == {} and evaluation_for(path) is None


def test_mismatched_and_unusable_inputs_are_refused(files, tmp_path):
    tokens = files["tokens"].tolist()
    other = write_model_gguf(tmp_path / "wide.gguf", v4_state_dict(2, 32, N_VOCAB, seed=1), DType.F32)
    with pytest.raises(EvalError, match=r"not the same model.*2 layers × 32, vocabulary 320.*2 layers × 64"):
        evaluate([other], files["ref"], tokens)
    vocab = write_model_gguf(tmp_path / "vocab.gguf", v4_state_dict(2, 64, 256, seed=1), DType.Q8_0)
    with pytest.raises(EvalError, match="vocabulary 256"):
        evaluate([vocab], files["ref"], tokens)
    with pytest.raises(EvalError, match=r"reference .*m-q8_0.gguf is quantized \(Q8_0\)"):
        evaluate([files["q4"]], files["q8"], tokens)
    with pytest.raises(EvalError, match="token id 320 at index 2 is outside"):
        evaluate([files["q4"]], files["ref"], [1, 2, 320])
    with pytest.raises(EvalError, match="at least 2"):
        evaluate([files["q4"]], files["ref"], [5])
    with pytest.raises(EvalError, match="convert it first"):
        evaluate([load_reference("tiny").pth_path], files["ref"], tokens)
    with pytest.raises(EvalError, match="no known tokenizer for a vocabulary of 320 tokens"):
        evaluate([files["q4"]], files["ref"], "some text")
    with pytest.raises(ModelFileError, match=r"missing\.gguf: no such file"):
        evaluate([tmp_path / "missing.gguf"], files["ref"], tokens)


def test_text_is_tokenized_for_the_reference(tmp_path):
    from runtime.text import tokenizers
    sd = v4_state_dict(n_layer=1, n_embd=32, n_vocab=50277, seed=2)
    ref = write_model_gguf(tmp_path / "neox-f32.gguf", sd, DType.F32)
    text = "The quick brown fox jumps over the lazy dog.\n\nIt barked."
    report = evaluate([ref], ref, text, max_tokens=8, threads=2, save=False)
    ids = tokenizers.load_tokenizer("20b").encode(text)[:8]
    assert len(ids) == 8 and report.positions_wanted == 7
    assert report.results[0].tokens_sha256 == hashlib.sha256(np.asarray(ids, "<i8").tobytes()).hexdigest()
    assert report.results[0].kl_mean == 0.0


def _run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_json_matches_the_api(files, capsys):
    args = ["eval", str(files["q4"]), "--reference", str(files["ref"]), "--tokens", str(files["tok_file"]),
            "--json", "--threads", "2", "--max-tokens", "20", "--no-save"]
    code, out, _ = _run_cli(args, capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["partial"] is False and doc["positions_wanted"] == 19
    tokens = files["tokens"][:20]
    want = _expected(_decode_all(files["q4"], tokens), _decode_all(files["ref"], tokens), tokens)
    got = doc["results"][0]
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=RTOL_QUANTIZED, abs=1e-12), key
    assert got["label"] == files["q4"].name and doc["reference"]["is_reference"] is True


def test_cli_table_and_errors(files, capsys, tmp_path):
    code, out, _ = _run_cli(["eval", "--formats", "q8_0", str(files["ref"]), "--tokens", str(files["tok_file"]),
                             "--threads", "2"], capsys)
    assert code == 0
    assert "reference" in out and "q8_0" in out and "Q8_0/Q8_0" in out and "KL mean" in out
    code, _, err = _run_cli(["eval", str(files["q4"]), "--reference", str(files["q8"]), "--tokens",
                             str(files["tok_file"])], capsys)
    assert code == 2 and "quantized" in err
    code, _, err = _run_cli(["eval", str(files["q4"]), "--tokens", str(files["tok_file"])], capsys)
    assert code == 2 and "--reference" in err
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 three")
    code, _, err = _run_cli(["eval", str(files["q4"]), "--reference", str(files["ref"]), "--tokens", str(bad)],
                            capsys)
    assert code == 2 and "('three') is not a token id" in " ".join(err.split())


def test_cli_names_a_missing_text_file_without_an_os_error(files, capsys, tmp_path):
    for option in ("--text", "--tokens"):
        missing = tmp_path / "not-there.txt"
        code, _, err = _run_cli(["eval", str(files["q4"]), "--reference", str(files["ref"]), option, str(missing)],
                                capsys)
        err = " ".join(err.split())
        assert code == 2 and f"{option} {missing}: cannot read it (no such file)" in err
        assert "Errno" not in err


def test_cli_ctrl_c_prints_partial_figures(files, capsys, monkeypatch):
    import tui.commands.eval as eval_cmd

    @contextmanager
    def interrupting_bars():
        def progress(event):
            if event.unit == "tok" and event.done == CHUNK:
                signal.raise_signal(signal.SIGINT)  # what Ctrl-C does; the command's handler cancels

        yield progress

    monkeypatch.setattr(eval_cmd, "_progress_bars", interrupting_bars)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in the background
    code, out, _ = _run_cli(["eval", str(files["q4"]), str(files["q8"]), "--reference", str(files["ref"]),
                             "--tokens", str(files["tok_file"]), "--json", "--threads", "2"], capsys)
    assert code == 130
    doc = json.loads(out)
    assert doc["partial"] and doc["cancelled"]
    assert [r["positions"] for r in doc["results"]] == [CHUNK, 0]
    assert doc["results"][1]["kl_mean"] is None
    assert signal.getsignal(signal.SIGINT) == before  # the handler was restored


# RWKV-7: the official fixture's checkpoint as the reference, files from both containers as models.


def test_rwkv7_reference_from_a_checkpoint_matches_the_official_logits(tmp_path):
    """A v7 .pth is converted to a temporary F32 file (llama.cpp's rwkv7 layout) as the reference; its
    perplexity agrees with the official package's logits, and the types column names the big matrices'
    type (the LoRA factors, F16 or Q8_0 in a quantized file, are not counted: not a mixture of the formats)."""
    ref = load_reference_v7("rwkv7-b")
    tokens = ref.tokens.astype(np.int64)
    report = evaluate_formats(ref.pth_path, ["q5_1", "f16"], tokens.tolist(), threads=2, work_dir=tmp_path)
    official = ref.logits_decode[: len(tokens) - 1].astype(np.float64)
    assert report.reference.perplexity == pytest.approx(_expected(official, official, tokens)["perplexity"], rel=1e-3)
    q5, f16 = report.results
    assert (q5.matrices, q5.head, f16.matrices, f16.head) == ("Q5_1", "Q8_0", "F16", "F16")
    assert q5.kl_mean > f16.kl_mean > 0.0 and q5.positions == len(tokens) - 1


def test_rwkv7_figures_match_a_direct_computation(tmp_path):
    """rwkv.cpp .bin files (reference F32, model Q8_0) and our GGUF (Q5_1) of one v7 checkpoint."""
    ref = load_reference_v7("rwkv7-b")
    tokens = ref.tokens.astype(np.int64)
    sd = read_pth_arrays(ref.pth_path)
    ref_bin = write_v7_model(tmp_path / "ref-f32.bin", sd, DType.F32)
    q8_bin = write_v7_model(tmp_path / "m-q8_0.bin", sd, DType.Q8_0)
    q5_gguf = tmp_path / "m-q5_1.gguf"
    convert(ref.pth_path, q5_gguf, DType.Q5_1)
    paths = (q8_bin, q5_gguf)
    report = evaluate(list(paths), ref_bin, tokens.tolist(), threads=2, save=False)
    ref_logits = _decode_all(ref_bin, tokens)
    for result, path in zip(report.results, paths, strict=True):
        assert result.positions == len(tokens) - 1
        _check(result, _expected(_decode_all(path, tokens), ref_logits, tokens))
    q8, q5 = report.results
    assert (q8.matrices, q8.head, q5.matrices, q5.head) == ("Q8_0", "F16", "Q5_1", "Q8_0")
    assert q5.kl_mean > q8.kl_mean > 0.0


def test_a_reference_of_another_architecture_or_ranks_is_refused(tmp_path):
    """Same layers, width and vocabulary are not enough: RWKV-4 against RWKV-7, or RWKV-7s of other
    LoRA ranks, would give figures that mean nothing."""
    ref = load_reference_v7("rwkv7-b")  # 2 layers × 128, vocabulary 320, ranks 24/40/16/48
    sd = read_pth_arrays(ref.pth_path)
    v7 = write_v7_model(tmp_path / "v7-f32.bin", sd, DType.F32)
    v4 = write_model_gguf(tmp_path / "v4-f32.gguf", v4_state_dict(2, 128, 320, seed=1), DType.F32)
    other = write_v7_model(tmp_path / "v7-other-f32.bin", v7_state_dict(2, 128, n_vocab=320, ranks=(32, 32, 32, 32)),
                           DType.F32)
    tokens = ref.tokens.tolist()
    with pytest.raises(EvalError, match=r"not the same model.*RWKV-4, 2 layers × 128.*RWKV-7, 2 layers × 128"):
        evaluate([v4], v7, tokens)
    with pytest.raises(EvalError, match=r"LoRA ranks 32/32/32/32, the reference .* LoRA ranks 24/40/16/48"):
        evaluate([other], v7, tokens)
    with pytest.raises(EvalError, match=r"not the same model.*RWKV-7.*RWKV-4"):
        evaluate_formats(v7, ["q8_0"], tokens, reference=v4)


# RWKV-6 and RWKV-5.2: the official fixtures' checkpoints as references, rwkv.cpp files and our GGUF as models.


@pytest.mark.parametrize("name", ["rwkv6-b", "rwkv5-a"])
def test_rwkv56_reference_from_a_checkpoint_matches_the_official_logits(name, tmp_path):
    """A v6 / v5.2 .pth is converted to a temporary F32 file (llama.cpp's rwkv6 layout, our rwkv5 one) as
    the reference; its perplexity agrees with the official package's logits, and the types column names
    the big matrices' type (RWKV-6's LoRA factors, F16 in every quantized file, are not counted)."""
    ref = load_reference_v7(name)
    tokens = ref.tokens.astype(np.int64)
    report = evaluate_formats(ref.pth_path, ["q5_1", "f16"], tokens.tolist(), threads=2, work_dir=tmp_path)
    official = ref.logits_decode[: len(tokens) - 1].astype(np.float64)
    assert report.reference.perplexity == pytest.approx(_expected(official, official, tokens)["perplexity"], rel=1e-3)
    q5, f16 = report.results
    assert (q5.matrices, q5.head, f16.matrices, f16.head) == ("Q5_1", "Q8_0", "F16", "F16")
    assert q5.kl_mean > f16.kl_mean > 0.0 and q5.positions == len(tokens) - 1


@pytest.mark.parametrize("name", ["rwkv6-a", "rwkv5-b"])  # -a's LoRA ranks are whole blocks, as rwkv.cpp's
def test_rwkv56_figures_match_a_direct_computation(name, tmp_path):
    """rwkv.cpp .bin files (reference F32, model Q8_0: its LoRA factors quantized too) and our GGUF (Q5_1)
    of one v6 / v5.2 checkpoint."""
    ref = load_reference_v7(name)
    tokens = ref.tokens.astype(np.int64)
    sd = read_pth_arrays(ref.pth_path)
    ref_bin = write_v56_model(tmp_path / "ref-f32.bin", sd, DType.F32)
    q8_bin = write_v56_model(tmp_path / "m-q8_0.bin", sd, DType.Q8_0)
    q5_gguf = tmp_path / "m-q5_1.gguf"
    convert(ref.pth_path, q5_gguf, DType.Q5_1)
    paths = (q8_bin, q5_gguf)
    report = evaluate(list(paths), ref_bin, tokens.tolist(), threads=2, save=False)
    ref_logits = _decode_all(ref_bin, tokens)
    for result, path in zip(report.results, paths, strict=True):
        assert result.positions == len(tokens) - 1
        _check(result, _expected(_decode_all(path, tokens), ref_logits, tokens))
    q8, q5 = report.results
    assert (q8.matrices, q8.head, q5.matrices, q5.head) == ("Q8_0", "F16", "Q5_1", "Q8_0")
    assert q5.kl_mean > q8.kl_mean > 0.0


def test_an_rwkv6_reference_of_other_ranks_or_version_is_refused(tmp_path):
    """RWKV-6s that differ only in their LoRA ranks, or an RWKV-5.2 of the same size, are other models."""
    sd = v56_state_dict("6", n_layer=2, n_embd=128, n_vocab=N_VOCAB, ranks=(24, 40), seed=1)
    v6 = write_v56_model(tmp_path / "v6-f32.bin", sd, DType.F32)
    other = write_v56_model(tmp_path / "v6-other-f32.bin",
                            v56_state_dict("6", n_layer=2, n_embd=128, n_vocab=N_VOCAB, ranks=(32, 64), seed=1),
                            DType.F32)
    v5 = write_v56_model(tmp_path / "v5-f32.bin", v56_state_dict("5.2", n_layer=2, n_embd=128, n_vocab=N_VOCAB),
                         DType.F32)
    tokens = np.random.default_rng(2).integers(0, N_VOCAB, 12).tolist()
    with pytest.raises(EvalError, match=r"LoRA ranks 32/64, the reference .* LoRA ranks 24/40"):
        evaluate([other], v6, tokens)
    with pytest.raises(EvalError, match=r"not the same model.*RWKV-5.2.*RWKV-6"):
        evaluate([v5], v6, tokens)


def test_formats_take_k_quant_mixes(files, capsys, tmp_path):
    """`eval --formats` takes the K mixes `convert --type` takes; a mix's row holds the figures of the
    file `convert` writes for it."""
    args = ["eval", "--formats", "q4_k_m,q2_k", str(files["ref"]), "--tokens", str(files["tok_file"]), "--json",
            "--threads", "2", "--max-tokens", "20", "--tmp-dir", str(tmp_path)]
    code, out, _ = _run_cli(args, capsys)
    assert code == 0
    results = json.loads(out)["results"]
    assert [r["label"] for r in results] == ["q4_k_m", "q2_k"]
    rows = {r["label"]: r for r in results}
    mixed = convert(files["ref"], tmp_path / "m-q4_k_m.gguf", "q4_k_m").path
    tokens = files["tokens"][:20]
    want = _expected(_decode_all(mixed, tokens), _decode_all(files["ref"], tokens), tokens)
    for key, value in want.items():
        assert rows["q4_k_m"][key] == pytest.approx(value, rel=RTOL_QUANTIZED, abs=1e-12), key
    code, _, err = _run_cli(["eval", "--formats", "q4_k_x", str(files["ref"]), "--tokens", str(files["tok_file"])],
                            capsys)
    assert code == 2 and "q4_k_m" in err
