"""`rwkv-tui chat`: piped stdin, the slash commands, and resuming a saved conversation."""

from __future__ import annotations

import io

import pytest

from runtime.chat.store import ConversationStore
from runtime.quant.types import DType
from tests.support.gguf_model import write_model_gguf
from tests.support.synthetic import v4_state_dict
from tui.cli import main as cli


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    sd = v4_state_dict(n_layer=2, n_embd=32, n_vocab=50277, seed=11)
    return write_model_gguf(tmp_path_factory.mktemp("m") / "raven-tiny.gguf", sd, DType.F32)


def _chat(monkeypatch, capsys, args: list[str], lines: list[str]) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = cli(["chat", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_piped_chat_commands_and_resume(model_path, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--seed", "1", "--max-tokens", "6"], [
        "Hello there",
        "/history",
        "/regen",
        "/set temperature 0.5",
        "/set",
        "/save greeting",
        "/list",
        "/bogus",
    ])
    assert rc == 0
    assert "[1] you: Hello there" in out
    assert "temperature = 0.5" in out
    assert "saved as 'greeting'" in out
    assert "greeting" in out.split("saved as")[1]  # /list shows it
    assert "tokens/s" in err
    assert "unknown command /bogus" in err

    with ConversationStore.open() as store:
        conv_id = store.last_conversation_id()
        record = store.get_conversation(conv_id)
        assert record.title == "greeting" and record.sampling["temperature"] == 0.5
        assert [m.role for m in store.messages(conv_id)] == ["init", "user", "assistant"]

    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--resume", "last"], ["/history", "/undo", "/history"])
    assert rc == 0
    assert f"resumed conversation {conv_id}" in err and "0 tokens re-read" in err
    assert out.count("[1] you: Hello there") == 1  # shown once, then undone
    with ConversationStore.open() as store:
        assert [m.role for m in store.messages(conv_id)] == ["init"]


def test_edit_by_number(model_path, monkeypatch, capsys):
    rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--seed", "2", "--max-tokens", "4"], [
        "first", "second", "/edit 1 replaced", "/history",
    ])
    assert rc == 0
    history = out.split("[1] you: ")[-1]
    assert history.startswith("replaced") and "second" not in history


def test_a_missing_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    rc, _out, err = _chat(monkeypatch, capsys, [str(tmp_path / "nope.gguf")], [])
    assert rc == 2 and "nope.gguf" in err
