"""`rwkv-tui chat`: piped stdin, the slash commands, and resuming a saved conversation."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

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


def _chat(monkeypatch, capsys, args: list[str], lines: list[str], *, per_line: bool = True) -> tuple[int, str, str]:
    """Run `rwkv-tui chat` on piped `lines` (with --lines: each line a message or /command)."""
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = cli(["chat", *args, *(["--lines"] if per_line else [])])
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


def test_errors_go_to_stderr_without_the_speaker(model_path, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--seed", "5", "--max-tokens", "3"],
                         ["/regen", "/continue", "Hi", "/edit 7 nope"])
    assert rc == 0
    assert out.count("Assistant: ") == 1  # the reply to "Hi"; the failed actions print no speaker
    assert "no reply to regenerate" in err and "no reply to continue" in err
    assert "message 7 is not one of yours" in err
    assert "not one of yours" not in out and "no reply" not in out


def test_piped_stdin_is_one_message_unless_lines(model_path, monkeypatch, capsys):
    lines = ["line one", "line two", "/history"]
    rc, _out, _err = _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"], lines, per_line=False)
    assert rc == 0
    with ConversationStore.open() as store:
        messages = store.messages(store.last_conversation_id())
    assert [m.role for m in messages] == ["init", "user", "assistant"]
    assert messages[1].content == "line one\nline two\n/history"

    rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--max-tokens", "2"], lines, per_line=True)
    assert rc == 0 and "[3] you: line two" in out
    with ConversationStore.open() as store:
        roles = [m.role for m in store.messages(store.last_conversation_id())]
    assert roles == ["init", "user", "assistant", "user", "assistant"]


def test_no_save_keeps_nothing_and_the_help_says_what_is_saved_where(model_path, monkeypatch, capsys):
    from runtime.chat.store import default_path

    with ConversationStore.open() as store:
        before = store.last_conversation_id()
    rc, out, _err = _chat(monkeypatch, capsys, [str(model_path), "--no-save", "--max-tokens", "2"],
                          ["Forget me"], per_line=False)
    assert rc == 0 and "Assistant: " in out
    with ConversationStore.open() as store:
        assert store.last_conversation_id() == before and not store.search("Forget me")
    rc, _out, err = _chat(monkeypatch, capsys, ["--no-save", "--resume", "last"], [])
    assert rc == 2 and "--no-save" in err

    with pytest.raises(SystemExit) as exit_:
        cli(["chat", "--help"])
    assert exit_.value.code == 0
    help_text = capsys.readouterr().out
    assert "What is saved" in help_text and str(default_path()) in help_text and "--no-save" in help_text


def test_a_registry_id_works_and_resume_needs_no_model(model_path, monkeypatch, capsys, tmp_path):
    from runtime.registry.catalog import save_user_entry

    monkeypatch.setenv("RWKV_TUI_CONFIG_DIR", str(tmp_path))  # the registry entry stays in this test
    save_user_entry({"id": "cli-tiny", "name": "CLI tiny", "family": "raven", "arch": "4", "n_layer": 2,
                     "n_embd": 32, "vocab": 50277, "file": model_path.name, "path": str(model_path)})
    rc, out, err = _chat(monkeypatch, capsys, ["cli-tiny", "--max-tokens", "3"], ["Hi from an id"], per_line=False)
    assert rc == 0, err
    assert "Assistant: " in out
    with ConversationStore.open() as store:
        conv_id = store.last_conversation_id()
        assert store.get_conversation(conv_id).model_ref == "cli-tiny"  # what the app records, too
    rc, out, err = _chat(monkeypatch, capsys, ["--resume", "last"], ["/history"])
    assert rc == 0, err
    assert f"resumed conversation {conv_id}" in err and "[1] you: Hi from an id" in out
    rc, _out, err = _chat(monkeypatch, capsys, ["no-such-model-id"], [])
    assert rc == 2 and "no-such-model-id" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ctrl_c_at_the_prompt_says_how_to_quit_and_twice_quits(model_path, monkeypatch, capsys):
    typed = iter(["Hello", KeyboardInterrupt, "/history", KeyboardInterrupt, KeyboardInterrupt, "never read"])

    def prompt(_prompt: str = "") -> str:
        item = next(typed)
        if item is KeyboardInterrupt:
            raise KeyboardInterrupt
        return item

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("tui.commands.chat.console.input", prompt)
    rc = cli(["chat", str(model_path), "--max-tokens", "3"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err.count("press Ctrl-C again or Ctrl-D to quit") == 2  # each first Ctrl-C; a line in between resets
    assert "[1] you: Hello" in out
    assert next(typed) == "never read"


ROOT = Path(__file__).resolve().parents[2]


def _start_chat(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "tui.cli", "chat", *args], cwd=ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_reply_text(p: subprocess.Popen) -> bytes:
    """Read the chat's stdout until the reply has shown some text."""
    seen = b""
    while not re.search(rb"Assistant: \s*\S", seen):
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"the chat ended before replying: {seen!r} {p.stderr.read().decode()[-2000:]}")
        seen += chunk
    return seen


def _streamed_reply(stdout: bytes) -> str:
    return stdout.decode().split("Assistant: ", 1)[1].split("\n", 1)[0].strip()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs signals")
def test_ctrl_c_stops_the_reply_keeps_it_and_the_chat_goes_on(model_path):
    p = _start_chat([str(model_path), "--seed", "6", "--max-tokens", "4000", "--lines"])
    try:
        p.stdin.write(b"Tell me a long story\n")
        p.stdin.flush()
        seen = _wait_for_reply_text(p)
        p.send_signal(signal.SIGINT)
        rest, err = p.communicate(b"/history\n", timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err.decode()[-2000:]
    out = (seen + rest).decode()
    assert "stopped" in err.decode()
    with ConversationStore.open() as store:
        messages = store.messages(store.last_conversation_id())
    assert [m.role for m in messages] == ["init", "user", "assistant"]
    assert not messages[2].complete and messages[2].content.strip() == _streamed_reply(seen + rest)
    assert "[2] model (incomplete): " in out


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_reply_killed_midway_is_kept_cut_short_and_can_be_regenerated(model_path, monkeypatch, capsys):
    p = _start_chat([str(model_path), "--seed", "7", "--max-tokens", "4000"])
    try:
        p.stdin.write(b"Tell me another long story\n")
        p.stdin.close()
        seen = _wait_for_reply_text(p)
        p.kill()
        p.wait()
        rest = p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    streamed = _streamed_reply(seen + rest)
    with ConversationStore.open() as store:
        conv_id = store.last_conversation_id()
        messages = store.messages(conv_id)
    assert [m.role for m in messages] == ["init", "user", "assistant"]
    partial = messages[2]
    assert not partial.complete and partial.content.strip() and streamed.startswith(partial.content.strip())

    rc, out, err = _chat(monkeypatch, capsys, ["--resume", "last", "--max-tokens", "3"], ["/history", "/regen"])
    assert rc == 0, err
    assert f"resumed conversation {conv_id}" in err and "[2] model (incomplete)" in out
    with ConversationStore.open() as store:
        messages = store.messages(conv_id)
    assert [m.role for m in messages] == ["init", "user", "assistant"]
    assert messages[2].id != partial.id and err.count("tokens/s") == 1  # the cut reply, written again


def test_think_and_system_options_and_the_think_command(model_path, monkeypatch, capsys):
    rc, out, err = _chat(monkeypatch, capsys, [str(model_path), "--family", "g1", "--think", "--system",
                                               "Be brief.", "--seed", "1", "--max-tokens", "4"], [
        "Hi",
        "/think",
        "/think off",
        "Again",
        "/think maybe",
        "/history",
    ])
    assert rc == 0, err
    assert "thinking is on" in out and "thinking is off" in out
    assert "usage: /think on|off" in err
    assert re.search(r"\[2\] model \(incomplete\) \(thought \d+ words\)", out)  # a 4-token reply, all reasoning
    with ConversationStore.open() as store:
        conv_id = store.last_conversation_id()
        record = store.get_conversation(conv_id)
        assert (record.think, record.system, record.family) == (False, "Be brief.", "g1")
        turns = [(m.role, m.think) for m in store.messages(conv_id) if m.role != "init"]
    assert turns == [("user", True), ("assistant", True), ("user", False), ("assistant", False)]
    # resuming keeps the switch unless --think says otherwise
    rc, out, err = _chat(monkeypatch, capsys, ["--resume", "last", "--think", "--max-tokens", "2"], ["/think"])
    assert rc == 0 and "thinking is on" in out
    rc, out, err = _chat(monkeypatch, capsys, ["--resume", "last", "--no-think"], ["/think"])
    assert rc == 0 and "thinking is off" in out
    rc, out, err = _chat(monkeypatch, capsys, ["--resume", "last"], ["/think"])
    assert rc == 0 and "thinking is off" in out  # kept


def test_think_and_system_need_a_family_that_has_them(model_path, monkeypatch, capsys):
    for args, complaint in ((["--think"], "--think: the raven family does not think"),
                            (["--system", "Be brief."], "--system: the raven family has no System turn")):
        rc, _out, err = _chat(monkeypatch, capsys, [str(model_path), "--family", "raven", *args], ["Hi"])
        assert rc == 2 and complaint in err, err
    rc, _out, err = _chat(monkeypatch, capsys, [str(model_path), "--family", "raven"], ["/think on"])
    assert rc == 0 and "raven family does not think" in err


def test_line_mode_prints_the_reasoning_dimmed_and_the_answer_plainly(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    from runtime.chat.conversation import Conversation
    from tests.support.transcript_model import TranscriptModel
    from tui.commands import chat as chat_command

    model = TranscriptModel(" <think>\nStep one.\n\nStep two.</think>\nFour.\n\n", cue="Assistant:",
                            tokenizer="world")
    with ConversationStore.open(tmp_path / "c.sqlite3") as store:
        conv = Conversation.start(store, model, family="g1", seed=1, think=True)
        monkeypatch.setattr(chat_command, "console", Console(force_terminal=True, color_system="standard",
                                                             highlight=False))
        chat_command.LineChat(conv, interactive=False).handle("2+2?")
    out = capsys.readouterr().out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert plain == "Assistant: Step one.\n\nStep two.\nFour.\n"
    dimmed = re.findall(r"\x1b\[2m(.*?)\x1b\[0m", out, re.S)  # each streamed piece, each line on its own
    assert "".join(dimmed) == "Step one.Step two."
