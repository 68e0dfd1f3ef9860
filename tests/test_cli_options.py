"""Numeric options of every command are checked before any work: out of range, the command exits with
status 2 and a message naming the option and its range (tui/commands/options.py); the runtime refuses
an unreasonable thread count too (runtime/threadcount.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import runtime
from runtime.bench import run_bench
from runtime.convert import convert
from runtime.jit.threads import ThreadPool
from runtime.threadcount import ThreadCountError, max_threads
from tui.cli import main as cli

THREADS = "at least one thread and at most"

CASES = [
    (["chat", "m.gguf", "--threads", "100000"], "--threads", THREADS),
    (["chat", "m.gguf", "--threads", "0"], "--threads", THREADS),
    (["chat", "m.gguf", "--max-tokens", "0"], "--max-tokens", "from 1 to 1,000,000"),
    (["chat", "m.gguf", "--seed", "-1"], "--seed", "from 0 to"),
    (["bench", "m.gguf", "--threads", "100000"], "--threads", THREADS),
    (["bench", "m.gguf", "--steps", "-1"], "--steps", "from 1 to 100,000"),
    (["bench", "m.gguf", "--steps", "0"], "--steps", "from 1 to 100,000"),
    (["bench", "m.gguf", "--steps", "many"], "--steps", "from 1 to 100,000"),
    (["convert", "a.pth", "b.gguf", "--threads", "100000"], "--threads", THREADS),
    (["eval", "m.gguf", "--text", "t.txt", "--reference", "r.gguf", "--max-tokens", "1"], "--max-tokens",
     "from 2 to"),
    (["eval", "m.gguf", "--threads", "-2"], "--threads", THREADS),
]


@pytest.mark.parametrize(("argv", "option", "range_text"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_out_of_range_options_exit_2_naming_the_option(argv, option, range_text, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}:" in err
    assert range_text in err
    assert "Traceback" not in err


def test_the_largest_accepted_thread_count_passes_the_option(capsys, tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    assert cli(["bench", str(missing), "--threads", str(max_threads())]) == 2  # then fails on the file
    assert "argument --threads" not in capsys.readouterr().err


def test_the_runtime_refuses_an_unreasonable_thread_count_before_any_work(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    for call in (lambda: runtime.load_model(missing, threads=100_000),
                 lambda: ThreadPool(100_000),
                 lambda: ThreadPool(0),
                 lambda: convert(missing, tmp_path / "out.gguf", "q8_0", threads=100_000),
                 lambda: run_bench(missing, [2, 100_000])):
        with pytest.raises(ThreadCountError, match=THREADS):
            call()
    with pytest.raises(ValueError, match="positive whole number"):
        run_bench(missing, steps=0)


def test_convert_help_says_the_default_type(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["convert", "--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "type of the layer matrices: f32, f16, q8_0, q5_1, q5_0, q4_1, q4_0, or a K-quant mix" in help_text
    assert "(default: q5_k_m)" in help_text


def test_convert_defaults_to_the_registry_default_for_large_models() -> None:
    """`convert` without --type writes what the registry recommends above 1B parameters."""
    from runtime.quant.mixes import parse_target
    from runtime.registry.recommend import DEFAULT_FORMAT
    from tui.cli import build_parser

    args = build_parser().parse_args(["convert", "a.pth", "b.gguf"])
    assert parse_target(args.type).base is DEFAULT_FORMAT
