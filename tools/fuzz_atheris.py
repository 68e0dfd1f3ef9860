"""Coverage-guided fuzzing of the readers with atheris (libFuzzer), where it is installed.

    pip install atheris        # in a venv of its own is fine (--system-site-packages for numpy &c.)
    python tools/fuzz_atheris.py TARGET [libFuzzer options, e.g. -runs=20000 -rss_limit_mb=512]

TARGET is one of: pickle (a checkpoint's data.pkl), pth, gguf, safetensors, rwkvcpp, state. The
corpus starts from tests/support/fuzz.py's seed files. Each input is read (and, for model files, every
tensor verified); success or one of the project's own errors is fine, anything else is reported by
libFuzzer as a crash with the input saved. `-rss_limit_mb` turns unbounded memory into a failure,
`-timeout` a hang. The forked campaign (tools/fuzz_campaign.py) also loads, converts and steps.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import atheris
import numpy  # noqa: F401  (imported first: only the project's own modules are instrumented)

with atheris.instrument_imports(include=["runtime"]):
    from runtime.chat.state_codec import decode
    from runtime.errors import RwkvError
    from runtime.formats import gguf_file, pth, rwkvcpp, safe_unpickle, safetensors_file
    from runtime.formats.checkpoint import open_checkpoint
    from runtime.model.state import State
    from runtime.verify import verify_tensors

from tests.support.fuzz import make_seeds

TARGETS = ("pickle", "pth", "gguf", "safetensors", "rwkvcpp", "state")
_SUFFIX = {"pth": ".pth", "gguf": ".gguf", "safetensors": ".safetensors", "rwkvcpp": ".bin"}


def _read_file(target: str, path: Path) -> None:
    if target == "pth":
        tensors = pth.read_pth(path)
    elif target == "gguf":
        tensors = gguf_file.read_gguf(path).tensors
    elif target == "safetensors":
        tensors = safetensors_file.read_safetensors(path)
    else:
        tensors = rwkvcpp.read_rwkvcpp(path).tensors
    for tensor in tensors.values():
        tensor.read_rows(0, min(tensor.n_rows, 4))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = sys.argv.pop(1)
    work = Path(tempfile.mkdtemp(prefix=f"atheris-{target}-"))
    seeds = make_seeds(work / "seeds")
    corpus = work / "corpus"
    corpus.mkdir()
    if target == "pickle":
        import zipfile

        with zipfile.ZipFile(work / "seeds" / "seed.pth") as zf:
            (corpus / "seed").write_bytes(zf.read("seed/data.pkl"))
    else:
        (corpus / "seed").write_bytes(seeds["state" if target == "state" else target].data)
    case = work / f"case{_SUFFIX.get(target, '')}"

    def test_one_input(data: bytes) -> None:
        try:
            if target == "pickle":
                safe_unpickle.unpickle_state_dict(data, "data.pkl")
            elif target == "state":
                State.from_bytes(decode(data))
            else:
                case.write_bytes(data)
                _read_file(target, case)
                verify_tensors(open_checkpoint(case))
        except RwkvError:
            pass

    atheris.Setup([sys.argv[0], str(corpus), *sys.argv[1:]], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
