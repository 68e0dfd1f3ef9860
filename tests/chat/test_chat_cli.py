"""`rwkv-tui chat`: piped stdin, the slash commands, and resuming a saved conversation."""

from __future__ import annotations

import io
import re

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


def _reply_lines(out: str) -> list[str]:
    return [line[len("Assistant: "):] for line in out.splitlines() if line.startswith("Assistant: ")]


def test_regen_replaces_the_reply(model_path, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--seed", "3", "--max-tokens", "6"],
                         ["Regenerate me", "/regen"])
    assert rc == 0 and err.count("tokens/s") == 2
    _first, second = _reply_lines(out)
    with ConversationStore.open() as store:
        messages = store.messages(store.last_conversation_id())
    assert [m.role for m in messages] == ["init", "user", "assistant"]  # replaced, not appended
    assert messages[-1].content.strip() == second.strip()


def test_list_shows_saved_conversations(model_path, monkeypatch, capsys):
    rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"],
                          ["Listed", "/save listed-by-slash-list", "/list"])
    assert rc == 0
    listing = out.split("saved as 'listed-by-slash-list'")[1].splitlines()[1:]
    assert any(re.match(r"^\s*\d+\s+listed-by-slash-list\s+\[", line) for line in listing), listing


def test_continue_reset_and_load(model_path, monkeypatch, capsys):
    rc, _out, err = _chat(monkeypatch, capsys, [str(model_path), "--seed", "4", "--max-tokens", "3"],
                          ["Keep going", "/continue", "/save load-me-later"])
    assert rc == 0 and "cut at max_tokens" in err
    with ConversationStore.open() as store:
        saved_id = store.last_conversation_id()
        messages = store.messages(saved_id)
    # /continue adds a continuation of the cut reply (kept as its own message, with its own state)
    assert [m.role for m in messages] == ["init", "user", "assistant", "assistant"]
    assert not messages[2].complete and messages[3].n_tokens > 0

    rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"],
                          ["Something else", "/reset", "/history", "/load load-me-later", "/history"])
    assert rc == 0
    before_load, after_load = out.split("conversation reset")[1].split(f"conversation {saved_id}: load-me-later")
    assert "you:" not in before_load  # reset: only the init prompt is left
    assert "[1] you: Keep going" in after_load


def test_same_seed_same_reply(model_path, monkeypatch, capsys):
    replies = []
    for seed in ("7", "7", "8"):
        rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--seed", seed, "--max-tokens", "8"],
                              ["Tell me something"])
        assert rc == 0
        replies.append(_reply_lines(out)[0])
    assert replies[0] == replies[1]
    assert replies[0] != replies[2]


def test_resume_by_id(model_path, monkeypatch, capsys):
    _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"], ["The one to resume"])
    with ConversationStore.open() as store:
        wanted = store.last_conversation_id()
    _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"], ["A later one"])
    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--resume", str(wanted)], ["/history"])
    assert rc == 0
    assert f"resumed conversation {wanted}" in err and "0 tokens re-read" in err
    assert "[1] you: The one to resume" in out and "A later one" not in out
