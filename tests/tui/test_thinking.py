"""Thinking in the app: the think switch (key and command palette), saved with the conversation and
with each turn, and a reply's reasoning in a dimmed block that streams and folds when the answer starts."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult
from textual.widgets import Static

from runtime.chat.store import ConversationStore
from tests.tui.conftest import notes, register, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, open_chat, send
from tui.app import RwkvApp
from tui.screens.dialogs import TextDialog
from tui.widgets.conversation import ConversationView, Shown

THINKING_FAMILY = """
[family.testthink]
description = "Test thinking chat (G1 markup)"
mode = "chat"
tokenizer = "20b"
user = "User: {message}\\n\\nAssistant:"
system = "System: {message}\\n\\n"
think_on = " <think"
think_off = " <think>\\n</think"
think_close = "</think>"
separator = "\\n\\n"
stop = ["\\n\\n"]

[family.testthink.sampling]
max_tokens = 8
"""


class ViewApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ConversationView("chat", "G1")


def _thinking_text(view) -> str:
    return str(view.thinking.query_one(".thinking-body", Static).render())


def test_a_reply_streams_its_reasoning_then_folds_it_when_the_answer_starts():
    async def body():
        app = ViewApp()
        async with app.run_test(size=(80, 30)) as pilot:
            view = app.query_one(ConversationView)
            plain = await view.add(Shown("assistant", " A plain reply.", seq=1))
            assert plain.thinking is None and plain.body.source == " A plain reply."
            streaming = await view.add(Shown("assistant", "", complete=False, think=True))
            for chunk in (">", "\nStep one.", "\n\nStep two.\n</thi", "nk>\n"):
                await streaming.append(chunk)
            await pilot.pause()
            block = streaming.thinking
            assert block is not None and not block.collapsed  # the reasoning streams in view
            assert "Step one.\n\nStep two." in _thinking_text(streaming)
            assert "think" not in _thinking_text(streaming) and streaming.body.source == ""
            await streaming.append("The answer is 4.")
            await pilot.pause()
            assert block.collapsed and "The answer is 4." in screen_text(app)  # (in the streaming tail)
            await streaming.finish(Shown("assistant", streaming.shown.content, seq=2, think=True, n_tokens=9))
            await pilot.pause()
            assert block.collapsed and streaming.body.source == "The answer is 4."
            assert "Thinking" in screen_text(app) and "Step one." not in screen_text(app)
            await pilot.click(block.query_one("CollapsibleTitle"))  # a click opens it again
            await pilot.pause()
            assert not block.collapsed and "Step one." in screen_text(app)
            fast = await view.add(Shown("assistant", ">\nQuick.", seq=3, think=False))
            assert fast.thinking is None and fast.body.source == "Quick."

    asyncio.run(body())


def test_the_think_switch_is_saved_with_the_conversation_and_each_turn(models, tui_home):
    with open(tui_home["config"] / "models.toml", "a", encoding="utf-8") as f:
        f.write(THINKING_FAMILY)
    register("tiny-think", models["tiny-a"], family="testthink")

    async def body():
        app = RwkvApp(model="tiny-think")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            assert pane.thinks and pane.think is False
            assert "fast (F6: think)" in screen_text(app)
            # a system prompt, from the palette, before the first message
            await pilot.press("ctrl+p")
            await type_text(pilot, "system prompt")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the system prompt dialog")
            app.screen.query_one("#dialog-text").text = "Be brief."
            await pilot.press("ctrl+s")
            assert pane.pending_system == "Be brief."  # the status line says how replies are written
            await pilot.press("f6")
            assert pane.think is True and any("Thinking on" in n for n in notes(app))
            await pilot.pause()
            assert "· thinking" in screen_text(app)
            await send(pilot, pane, "Hi")
            conv_id = pane.conversation.id
            views = pane.view.views
            assert views[-1].thinking is not None  # the reply shows its (unfinished) reasoning block
            # the command palette turns it off again; the next turn is sent with the empty think block
            await pilot.press("ctrl+p")
            await type_text(pilot, "thinking on/off")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await wait_for(pilot, lambda: pane.think is False, what="thinking off from the palette")
            await send(pilot, pane, "Again")
        with ConversationStore.open() as store:
            assert store.get_conversation(conv_id).think is False
            assert store.get_conversation(conv_id).system == "Be brief."
            turns = [(m.role, m.think) for m in store.messages(conv_id) if m.role != "init"]
        assert turns == [("user", True), ("assistant", True), ("user", False), ("assistant", False)]

    asyncio.run(body())


def test_the_switch_says_when_the_family_does_not_think(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            await pilot.press("f6")
            assert pane.think is False and any("does not think" in n for n in notes(app))

    asyncio.run(body())


def test_export_folds_the_reasoning_and_copy_takes_the_answer():
    from tui.export import conversation_markdown

    reply = Shown("assistant", ">\nStep one.\n</think>\nFour.", seq=2, think=True)
    text = conversation_markdown("Sums", "chat", "G1", [Shown("user", "2+2?", seq=1, think=True), reply])
    assert "<details><summary>Thinking</summary>\n\nStep one.\n\n</details>\n\nFour.\n" in text
    assert "</think>" not in text
    assert reply.parts() == ("Step one.", "Four.")  # what alt+c and c copy: the answer
    plain = Shown("assistant", " Hi there.", seq=2)
    assert plain.parts() == (None, " Hi there.")


def test_a_g1_chat_on_an_rwkv7_model(tui_home, tmp_path):
    """The app runs a real (tiny, random) RWKV-7 model with the G1 family: thinking on, the reply's
    reasoning block shows, and the turn is saved with its setting."""
    from runtime.chat.store import ConversationStore as Store
    from runtime.convert import convert
    from runtime.registry.catalog import save_user_entry
    from tests.support.synthetic import v7_state_dict
    from tests.support.torch_writer import write_pth

    sd = v7_state_dict(n_layer=1, n_embd=64, head_size=32, n_vocab=65536, ranks=(8, 8, 8, 16), seed=9)
    gguf = tmp_path / "rwkv7-g1-tiny.gguf"
    convert(write_pth(tmp_path / "rwkv7-g1-tiny.pth", sd, dtype="float32"), gguf, "f32")
    save_user_entry({"id": "g1-tiny", "name": "G1 tiny", "family": "g1", "arch": "7", "n_layer": 1,
                     "n_embd": 64, "file": gguf.name, "path": str(gguf)})

    async def body():
        app = RwkvApp(model="g1-tiny")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            pane.pending_sampling = app.families["g1"].sampling.replace(max_tokens=6)
            await pilot.press("f6")
            await send(pilot, pane, "Hi")
            assert pane.view.views[-1].thinking is not None
            return pane.conversation.id

    conv_id = asyncio.run(body())
    with Store.open() as store:
        assert store.get_conversation(conv_id).family == "g1"
        assert [(m.role, m.think) for m in store.messages(conv_id)][1:] == [("user", True), ("assistant", True)]
