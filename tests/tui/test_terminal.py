"""End to end in a real terminal (tmux): start `rwkv-tui`, write a message in $EDITOR and type another,
send them, read the replies off the screen, quit, start again and find the conversation. Skipped where
tmux is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runtime.chat.store import ConversationStore
from tests.tui.conftest import FAMILIES

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

WIDTH, HEIGHT = 110, 32


class Terminal:
    """One tmux server of our own (its own socket), so the user's tmux is never touched."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"rwkv-tui-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.runs = 0

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                             timeout=10)
        return out.stdout

    def start(self, *app_args: str) -> None:
        command = " ".join([sys.executable, "-m", "tui.cli", *app_args])
        # the shell reports the exit status and keeps the pane open to read it
        if self.runs:
            self.tmux("kill-session", "-t", self.session)
        self.runs += 1
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "-s", self.session,
                  f"cd {Path.cwd()} && {command}; echo EXITED=$?; sleep 60")

    @property
    def session(self) -> str:
        return f"app{self.runs}"

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", self.session, *keys)

    def wait(self, predicate, what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen shows:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")


def last_reply(store_path: Path):
    with ConversationStore.open(store_path) as store:
        for record in store.list_conversations():
            messages = store.messages(record.id)
            if messages[-1].role == "assistant":
                return record, messages
    return None


def words(text: str) -> list[str]:
    """Runs of letters and digits, which Markdown shows as they are (whatever a random model writes)."""
    return re.findall(r"[A-Za-z0-9]{2,}", text)


def squash(screen: str) -> str:
    """The screen's text without spaces, line ends and border glyphs (a wrapped word is whole again)."""
    return re.sub(r"[\s▌▎▊▏│]", "", screen)


def test_chat_in_a_real_terminal_then_find_it_after_a_restart(models, tui_home, tmp_path):
    # greedy sampling: the replies are the same on every run, so what they must show is known
    user_models = tui_home["config"] / "models.toml"  # the test families and the registered models
    sampling = "[family.testchat.sampling]\ntemperature = "
    text = user_models.read_text(encoding="utf-8")
    assert FAMILIES in text and sampling + "1.0" in text
    user_models.write_text(text.replace(sampling + "1.0", sampling + "0"), encoding="utf-8")
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "Hello from the editor" > "$1"\n', encoding="utf-8")
    editor.chmod(0o755)
    env = {**os.environ, "TERM": "xterm-256color", "EDITOR": str(editor), "VISUAL": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    term = Terminal(env)
    store_path = tui_home["data"] / "conversations.sqlite3"
    try:
        term.start("--model", "tiny-a")
        term.wait(lambda s: "tiny-a F32" in s and "state:" in s, "the model to load")
        term.keys("C-o")  # the message is written in $EDITOR (the app suspends, then comes back)
        term.wait(lambda s: "Hello from the editor" in s, "the editor's text in the prompt")
        term.keys("Enter")
        deadline = time.monotonic() + 30
        while (found := last_reply(store_path)) is None:
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        record, messages = found
        assert messages[-2].content == "Hello from the editor"
        reply_words = words(messages[-1].content)
        assert reply_words, messages[-1].content  # greedy: the same reply every run
        screen = term.wait(lambda s: "tok/s" in s, "the reply to end")
        shown = [w for w in reply_words if w in squash(screen)]  # the reply, as the model wrote it, is shown
        assert len(shown) >= len(reply_words) / 2, (reply_words, screen)
        # a message typed key by key, as a person would
        term.keys("-l", "Typed in the terminal")
        term.wait(lambda s: "Typed in the terminal" in s, "the typed text in the prompt")
        term.keys("Enter")
        deadline = time.monotonic() + 30
        while True:
            found = last_reply(store_path)
            if found is not None and found[1][-2].content == "Typed in the terminal":
                break
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        term.wait(lambda s: "tok/s" in s and "generating" not in s, "the second reply to end")
        term.keys("C-q")
        term.wait(lambda s: "EXITED=0" in s, "a clean exit")

        term.start()  # no arguments: the tab of last time comes back
        screen = term.wait(lambda s: "Typed in the terminal" in s and "state:" in s, "the restored conversation")
        assert record.title in screen or "Hello from the edi" in screen  # in the sidebar and the tab
        assert any(w in squash(screen) for w in reply_words)
        term.keys("C-q")
        term.wait(lambda s: "EXITED=0" in s, "a clean exit")
    finally:
        term.close()
