"""Do our GGUF files run in llama.cpp, and does llama.cpp compute what our runtime computes?

    python bench/llamacpp_check.py [--llama-site SITE_PACKAGES] [--tokens 32] [--decode 16] FILE.gguf …
    python bench/llamacpp_check.py --llama-site SITE_PACKAGES --make DIR   # the checks in ARCHITECTURE.md

--make DIR writes two random checkpoints as BlinkDL `.pth` files (tests/support/synthetic.py: RWKV-7
and RWKV-6, 2 layers × 256 or --make-shape, head size 64, the World vocabulary of 65536 so that convert writes
llama.cpp's `rwkv` token list, LoRA ranks of a released model's proportions), converts each with
`rwkv-tui convert` to every type in --make-types and checks those files, each model's F32 file as the
reference.

`rwkv-tui convert` writes RWKV-7 and RWKV-6 files in llama.cpp's `rwkv7` / `rwkv6` layouts so that one
file runs in both programs. For every file given, this loads it in llama.cpp (through the
llama-cpp-python package, which is never a dependency of the project: install it in a venv of its own,
`python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python`, and pass that venv's
site-packages as --llama-site; it is appended to sys.path, so only packages missing here come from
there) and in our runtime, feeds both the same token ids (a fixed sentence in the World tokenizer, or
ids spread over the vocabulary for another one) and prints, per position, max |Δ logit| / max |logit|
(llama.cpp's logits against ours), and the largest over all positions. It also checks that llama.cpp's
tokenizer splits that sentence as ours does, and that llama.cpp gives the same logits fed one token per
call (decoding) as in one batch. With --reference (the same model's F32 file, say) both programs'
logits are also set against that file's logits in our runtime, which shows how much of a quantized
file's difference is its quantization. A file llama.cpp refuses is
reported with the lines of llama.cpp's log that say why.

llama.cpp runs without its extra CPU weight buffers unless --extra-bufts is given: built with
GGML_NATIVE on a Sapphire Rapids VM (AMX_INT8), llama-cpp-python 0.3.36 crashes (SIGSEGV in
ggml_backend_amx_mul_mat) on the first quantized matrix product, for llama.cpp's own Q8_0 file
(`llama_model_quantize` of our F32 one) as for ours; F32 and F16 files run either way. Built without
AMX (CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
-DGGML_BMI2=ON -DGGML_AVX_VNNI=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON
-DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF" pip install --no-cache-dir llama-cpp-python), --extra-bufts
works and gives llama.cpp its repacked weights: use that build for decode speed.

With --decode N (0 to skip) it also times decoding one token at a time in both programs, interleaved
A B A B over --rounds rounds on the same thread count, and prints the median ms/token of each: a
figure to compare only within one run (give `lscpu` and `uptime` with it).

Expected, and measured on random 2-layer models 256 wide (head size 64, World vocabulary; see
docs/ARCHITECTURE.md): F32 files agree to ~3e-7 of the logit range; F16 to ~4e-4 (ggml rounds the
activations to F16 for F16 matrices); quantized files to ~1e-2 at every type (ggml rounds activations to
8 bits for quantized dot products; we keep them in float), no more than what the quantization itself
moves (1e-2 … 1e-1 from the F32 file, in llama.cpp and in ours alike).
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.errors import RwkvError
from runtime.machine import cpu_name
from runtime.model.model import Model, load_model

ROOT = Path(__file__).resolve().parents[1]
TEXT = "The quick brown fox jumps over the lazy dog. 你好，世界！ def main(): return 42\n\nUser: hi"
INSTALL_HINT = (
    "llama_cpp is not importable: install llama-cpp-python in a venv of its own, e.g.\n"
    "  python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python\n"
    "and pass --llama-site /tmp/llvenv/lib/python3.11/site-packages"
)
LOG_WORDS = ("error", "failed", "wrong", "missing", "unknown", "invalid", "expected")


def import_llama_cpp(site: str | None) -> Any:
    """The llama_cpp module, from this Python or from `site`; exits with install advice if neither has it."""
    if site:
        sys.path.append(site)
    try:
        import llama_cpp
    except ImportError as e:
        sys.exit(f"{INSTALL_HINT}\n({e})")
    return llama_cpp


def token_ids(model: Model, count: int) -> list[int]:
    """`count` ids: the sentence in the file's tokenizer (repeated as needed), else a fixed spread."""
    try:
        ids = model.tokenizer.encode(TEXT)
    except Exception:
        ids = []
    if not ids:
        ids = [int(i) for i in np.linspace(1, model.n_vocab - 1, 97)]
    while len(ids) < count:
        ids += ids
    return ids[:count]


class StderrCapture:
    """Sends file descriptor 2 to a temporary file while active (llama.cpp logs there from C)."""

    def __enter__(self) -> StderrCapture:
        sys.stderr.flush()
        self.file = tempfile.TemporaryFile(mode="w+b")
        self.saved = os.dup(2)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        self.text = self.file.read().decode("utf-8", "replace")
        self.file.close()


def load_llama(llama_cpp: Any, path: Path, n_ctx: int, threads: int, extra_bufts: bool) -> tuple[Any, str]:
    """(Llama or None, the log lines that explain a refusal); `extra_bufts` False keeps ggml's CPU
    backend off its extra weight buffers (AMX, repacking), as llama.cpp's `--no-repack` does."""
    defaults = llama_cpp.llama_cpp.llama_model_default_params

    def model_params() -> Any:
        params = defaults()
        params.use_extra_bufts = extra_bufts
        return params

    llama_cpp.llama_cpp.llama_model_default_params = model_params
    with StderrCapture() as log:
        try:
            llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx,
                                  n_threads=threads, n_threads_batch=threads, verbose=True)
        except Exception as e:
            llm, error = None, f"{type(e).__name__}: {e}"
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = defaults
    if llm is not None:
        return llm, ""
    why = [line.strip() for line in log.text.splitlines() if any(w in line.lower() for w in LOG_WORDS)]
    return None, "\n    ".join([error, *why[-8:]])


def llama_logits(llm: Any, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits after each of `ids`, from a fresh state, fed as one batch."""
    llm.reset()
    with StderrCapture():
        llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def llama_logits_stepwise(llm: Any, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits after each of `ids`, from a fresh state, fed one token per call (decoding)."""
    llm.reset()
    with StderrCapture():
        for t in ids:
            llm.eval([t])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def same_tokens(llm: Any, ours: Model) -> str:
    """Whether llama.cpp's tokenizer, reading the file's vocabulary, splits TEXT as ours does."""
    if llm.metadata.get("tokenizer.ggml.model") in ("none", "no_vocab"):
        return "llama.cpp has no vocabulary here (tokenizer.ggml.model none: it runs on token ids)"
    try:
        mine = ours.tokenizer.encode(TEXT)
    except Exception as e:
        return f"ours cannot tokenize ({e})"
    theirs = llm.tokenize(TEXT.encode("utf-8"), add_bos=False, special=False)
    return "yes" if list(theirs) == list(mine) else f"NO: llama.cpp {list(theirs)[:12]}…, ours {mine[:12]}…"


def relative(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per position: max |got - want| / max |want|."""
    return np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)


def compare(path: Path, llama_cpp: Any, reference: Model | None, args: argparse.Namespace) -> dict[str, Any]:
    """Load `path` in both programs, compare their logits (and the reference's), time decoding."""
    result: dict[str, Any] = {"file": path.name}
    try:
        ours: Model | None = load_model(path, threads=args.threads)
    except RwkvError as e:
        ours, result["ours_error"] = None, str(e)
    probe = ours or reference
    ids = token_ids(probe, args.tokens) if probe else [int(i) for i in np.linspace(1, 255, args.tokens)]
    want = ours.forward_all(ids)[0] if ours else None
    if ours:
        result.update(type=ours.file_type, arch=ours.arch_name)
    if reference is not None:
        result["ref"] = reference.forward_all(ids)[0]
        if want is not None:
            result["ours_vs_ref"] = relative(want, result["ref"])
    llm, why = load_llama(llama_cpp, path, max(args.tokens, args.decode, 8), args.threads, args.extra_bufts)
    result["loads"] = llm is not None
    if llm is None:
        result["error"] = why
    else:
        got = llama_logits(llm, ids)
        result["steps_vs_batch"] = relative(llama_logits_stepwise(llm, ids), got)
        if ours:
            result["tokens_agree"] = same_tokens(llm, ours)
        if "ref" in result:
            result["llama_vs_ref"] = relative(got, result["ref"])
        if want is not None:
            result["rel"] = relative(got, want)
            result["argmax_agree"] = float(np.mean(got.argmax(axis=1) == want.argmax(axis=1)))
            if args.decode:
                result["ms_ours"], result["ms_llama"] = time_decode(ours, llm, ids[: args.decode], args.rounds)
        with StderrCapture():
            llm.close()
    if ours:
        ours.close()
    return result


def time_decode(ours: Model, llm: Any, ids: list[int], rounds: int) -> tuple[float, float]:
    """Median ms/token decoding `ids` one at a time, ours and llama.cpp's interleaved round by round."""
    mine, theirs = [], []
    for _ in range(rounds):
        state = None
        t0 = time.perf_counter()
        for t in ids:
            _, state = ours.forward([t], state)
        mine.append((time.perf_counter() - t0) * 1e3 / len(ids))
        llm.reset()
        with StderrCapture():
            t0 = time.perf_counter()
            for t in ids:
                llm.eval([t])
            theirs.append((time.perf_counter() - t0) * 1e3 / len(ids))
    return statistics.median(mine), statistics.median(theirs)


def report(r: dict[str, Any], per_position: bool) -> None:
    print(f"{r['file']}  ({r.get('arch', '?')}, {r.get('type', '?')})")
    if "ours_error" in r:
        print(f"  our runtime refuses it: {r['ours_error']}")
    if not r["loads"]:
        print(f"  llama.cpp REFUSED it:\n    {r['error']}")
    if "rel" in r:
        rel = r["rel"]
        print(f"  llama.cpp against ours, max |Δ logit| / max |logit| over {rel.size} positions: "
              f"max {rel.max():.2e}, median {np.median(rel):.2e}; same argmax at {r['argmax_agree']:.0%}")
        print(f"  llama.cpp tokenizes the test sentence as ours does: {r['tokens_agree']}")
        if per_position:
            print("  per position: " + " ".join(f"{x:.1e}" for x in rel))
    if "steps_vs_batch" in r:
        print(f"  llama.cpp one token per call against its batch: max {r['steps_vs_batch'].max():.2e}")
    for key, who in (("ours_vs_ref", "ours"), ("llama_vs_ref", "llama.cpp")):
        if key in r:
            print(f"  {who} against the reference: max {r[key].max():.2e}, median {np.median(r[key]):.2e}")
    if "ms_ours" in r:
        print(f"  decode, median ms/token: ours {r['ms_ours']:.2f}, llama.cpp {r['ms_llama']:.2f}")


MAKE_TYPES = "f32,f16,q8_0,q5_1,q4_k_m"


def make_files(folder: Path, n_layer: int, n_embd: int, types: list[str]) -> list[tuple[Path, list[Path]]]:
    """Write the two checkpoints into `folder`, convert them: [(F32 file, [every file])] per model."""
    from tests.support.synthetic import v7_state_dict, v56_state_dict
    from tests.support.torch_writer import write_pth

    folder.mkdir(parents=True, exist_ok=True)
    shape = {"n_layer": n_layer, "n_embd": n_embd, "head_size": 64, "n_vocab": 65536}
    models = {
        "rwkv7": lambda: v7_state_dict(**shape, ranks=(64, 64, 32, 128)),
        "rwkv6": lambda: v56_state_dict("6", **shape, ranks=(32, 64)),
    }
    made = []
    for name, state_dict in models.items():
        source = write_pth(folder / f"{name}-{n_layer}x{n_embd}.pth", state_dict())
        files = []
        for kind in ["f32", *(t for t in types if t != "f32")]:
            out = source.with_name(f"{source.stem}-{kind}.gguf")
            done = subprocess.run([sys.executable, "-m", "tui.cli", "convert", "--type", kind, str(source), str(out)],
                                  cwd=ROOT, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"rwkv-tui convert {source.name} --type {kind} failed:\n{done.stderr}")
            files.append(out)
        made.append((files[0], files))
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="GGUF files (rwkv7 / rwkv6 from rwkv-tui convert)")
    ap.add_argument("--make", type=Path, metavar="DIR", help="write, convert and check the test models in DIR")
    ap.add_argument("--make-shape", default="2x256", help="LAYERSxWIDTH of the --make models (default 2x256)")
    ap.add_argument("--make-types", default=MAKE_TYPES, help=f"their conversions (default {MAKE_TYPES}; f32 always)")
    ap.add_argument("--llama-site", help="site-packages folder that holds llama_cpp (appended to sys.path)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens compared (default 32)")
    ap.add_argument("--decode", type=int, default=16, help="tokens decoded per timing round, 0: no timing")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds, interleaved (default 5)")
    ap.add_argument("--threads", type=int, default=2, help="threads in both programs (default 2)")
    ap.add_argument("--reference", type=Path,
                    help="a file of the same model (e.g. its F32 conversion) that our runtime runs as the yardstick: "
                         "both programs' logits are also compared with its logits")
    ap.add_argument("--extra-bufts", action="store_true",
                    help="let llama.cpp use its extra CPU weight buffers (AMX, repacking); see the module docstring")
    ap.add_argument("--quiet", action="store_true", help="leave out the per-position figures")
    args = ap.parse_args()
    if not args.files and not args.make:
        ap.error("give GGUF files or --make DIR")
    llama_cpp = import_llama_cpp(args.llama_site)
    faulthandler.enable(file=os.fdopen(os.dup(2), "w"))  # a crash in llama.cpp still shows
    print(f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}; {cpu_name()}, {os.cpu_count()} CPUs; "
          f"load {os.getloadavg()[0]:.2f}; {args.threads} threads")
    groups = [(args.reference, args.files)] if args.files else []
    if args.make:
        n_layer, n_embd = (int(n) for n in args.make_shape.lower().split("x"))
        groups += make_files(args.make, n_layer, n_embd, args.make_types.split(","))
    for reference_path, files in groups:
        reference = load_model(reference_path, threads=args.threads) if reference_path else None
        for path in files:
            report(compare(path, llama_cpp, reference, args), not args.quiet)
            sys.stdout.flush()
        if reference:
            reference.close()


if __name__ == "__main__":
    main()
