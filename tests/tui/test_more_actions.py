"""More flows through the keyboard: a novel tab (ctrl+t), edit the last message (ctrl+l), a newline in
the prompt, copy a code block (y), `--model PATH`, convert on the models screen (c), rate and ETA of a
download, an unreachable download address, and measured quality on the models screen."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runtime.chat.store import ConversationStore
from runtime.quant.types import DType
from runtime.registry.catalog import load_catalog
from tests.registry.server import refused_url
from tests.tui.conftest import notes, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, open_chat, reply_to, send
from tests.tui.test_models_jobs import add_entry, job_rows, select_model
from tests.tui.test_resume import choose
from tui.app import RwkvApp
from tui.screens.dialogs import ChoiceDialog, TextDialog
from tui.screens.jobs import JobsScreen
from tui.widgets.conversation import MessageView
from tui.widgets.job_row import describe
from tui.widgets.pane import ChatPane


def saved_messages(conversation_id: int):
    with ConversationStore.open() as store:
        return [m for m in store.messages(conversation_id) if m.role != "init"]


def shown(pane: ChatPane) -> list[tuple[str, str]]:
    return [(v.shown.role, v.shown.content) for v in pane.view.query(MessageView)]


async def choose_label(pilot, app, *parts: str) -> None:
    """Pick the option whose label contains every one of `parts` in the open ChoiceDialog."""
    await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the choice dialog")
    labels = [str(label) for label, _ in app.screen.choices]
    index = next(i for i, label in enumerate(labels) if all(p in label for p in parts))
    for _ in range(index):
        await pilot.press("down")
    await pilot.press("enter")


def never_ends(pane: ChatPane) -> None:
    """Replies of the random model are never empty (end-of-text banned), still short."""
    pane.set_sampling(pane.sampling().replace(banned_tokens=(0,)))


# --- 1. ctrl+t: a new novel tab -------------------------------------------------------------------


def test_ctrl_t_opens_a_novel_tab_and_the_model_continues_the_text(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            chat_pane = await open_chat(pilot, app)
            assert chat_pane.mode == "chat"
            await pilot.press("ctrl+t")
            # two ready models can write a novel (with the testnovel template): the app asks which
            await choose_label(pilot, app, "tiny-b.gguf", "Test novel")
            await wait_for(pilot, lambda: len(app.chat.panes) == 2, what="the novel tab")
            pane = app.chat.active_pane
            assert pane is not chat_pane
            await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the novel's model")
            assert pane.mode == "novel" and pane.family_name == "testnovel"
            assert pane.view.has_class("-novel")
            assert Path(pane.model.path).name == "tiny-b.gguf"
            assert "New novel" in screen_text(app)
            never_ends(pane)
            await send(pilot, pane, "Once upon a time")
            saved = saved_messages(pane.conversation.id)
            assert [m.role for m in saved] == ["text", "assistant"]
            assert saved[0].content == "Once upon a time" and saved[1].content
            assert shown(pane) == [(m.role, m.content) for m in saved]
            assert pane.conversation.record.mode == "novel"
            assert chat_pane.conversation is None  # the chat tab is untouched

    asyncio.run(body())


# --- 2. ctrl+l: edit the last message -------------------------------------------------------------


def test_ctrl_l_edits_the_last_user_message_and_a_new_reply_follows(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            never_ends(pane)
            await send(pilot, pane, "First question")
            await send(pilot, pane, "Second question")
            conv = pane.conversation
            before = saved_messages(conv.id)
            assert [m.content for m in before if m.role == "user"] == ["First question", "Second question"]
            await pilot.press("ctrl+l")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the edit dialog")
            area = app.screen.query_one("#dialog-text")
            assert area.text == "Second question"  # the last of the user's messages, not the first
            await pilot.press("ctrl+a", "ctrl+k")
            await type_text(pilot, "Edited question")
            await reply_to(pilot, pane, "ctrl+s")
            after = saved_messages(conv.id)
            assert [m.role for m in after] == ["user", "assistant", "user", "assistant"]
            assert after[:2] == before[:2]  # the first exchange is kept as it was
            assert after[2].content == "Edited question"
            assert after[3].id != before[3].id and after[3].content
            assert shown(pane) == [(m.role, m.content) for m in after]
            assert app.screen is app.chat

    asyncio.run(body())


# --- 3. the newline key in the prompt -------------------------------------------------------------


def test_the_newline_keys_insert_a_newline_in_the_prompt_instead_of_sending(models):
    async def body():
        app = RwkvApp(model="tiny-a")
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            pane.prompt.focus()
            await type_text(pilot, "one")
            await pilot.press("shift+enter")
            await type_text(pilot, "two")
            await pilot.press("ctrl+j")
            await type_text(pilot, "three")
            await pilot.press("alt+enter")
            await type_text(pilot, "four")
            await pilot.pause(0.2)
            assert pane.prompt.text == "one\ntwo\nthree\nfour"
            assert pane.replies == 0 and not pane.busy and pane.conversation is None and not pane.view.views
            # enter sends all the lines as one message
            await reply_to(pilot, pane, "enter")
            saved = saved_messages(pane.conversation.id)
            assert saved[0].role == "user" and saved[0].content == "one\ntwo\nthree\nfour"
            assert pane.prompt.text == ""

    asyncio.run(body())


# --- 4. y: copy a selected message's code block ---------------------------------------------------


def test_y_copies_the_code_block_of_the_selected_message(models):
    one_block = "Why does this fail?\n\n```python\nprint('hi')\nx = 1 / 0\n```\n\nThanks"
    two_blocks = "Compare\n\n```\nfirst block\n```\n\nwith\n\n~~~sh\necho second\n~~~"

    async def body():
        app = RwkvApp(model="tiny-a")
        copied: list[str] = []
        app.copy_to_clipboard = copied.append
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            pane.prompt.text = one_block
            await reply_to(pilot, pane, "enter")
            reply = pane.conversation.messages[-1].content
            # the reply is selected first (alt+up); the user's message is one up
            await pilot.press("alt+up", "up")
            assert pane.view.selected is pane.view.views[0]
            await pilot.press("y")
            await pilot.pause()
            assert copied == ["print('hi')\nx = 1 / 0"]
            assert any("Code copied" in n for n in notes(app))
            # a message without a fenced block copies nothing and says so
            if "```" not in reply and "~~~" not in reply:
                await pilot.press("down", "y")
                await pilot.pause()
                assert copied == ["print('hi')\nx = 1 / 0"]
                assert any("no code block" in n for n in notes(app))
            # several blocks: the app asks which one
            pane.prompt.focus()
            pane.prompt.text = two_blocks
            await reply_to(pilot, pane, "enter")
            await pilot.press("alt+up", "up")
            assert pane.view.selected.shown.content == two_blocks
            await pilot.press("y")
            await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the block choice")
            await choose(pilot, app, "echo second")
            await pilot.pause()
            assert copied[-1] == "echo second"

    asyncio.run(body())


# --- 5. --model PATH ------------------------------------------------------------------------------


def test_model_path_registers_the_file_and_opens_a_tab_on_it(model_files, tui_home):
    own = tui_home["data"].parent / "my-own-file.gguf"
    own.write_bytes(model_files["tiny-b"].read_bytes())
    assert not any(e.path == own.resolve() for e in load_catalog().models.values())

    async def body():
        app = RwkvApp(model=str(own))
        async with app.run_test(size=SIZE) as pilot:
            pane = await open_chat(pilot, app)
            assert Path(pane.model.path).resolve() == own.resolve()
            assert len(app.chat.panes) == 1
            assert not [n for n in notes(app) if "--model" in n]
            entries = [e for e in load_catalog().models.values() if e.path == own.resolve()]
            assert len(entries) == 1
            entry = entries[0]
            assert entry.id == "my-own-file" and (entry.n_layer, entry.n_embd) == (1, 32)
            assert pane.model_ref == entry.id
            assert pane.family_name == entry.family and pane.mode == app.families[entry.family].mode
            assert "my-own-file" in screen_text(app)

    asyncio.run(body())
    # a second start with the same path uses the entry registered the first time
    asyncio.run(body())


# --- 6. c on the models screen: convert to another type -------------------------------------------


def test_convert_a_ready_model_to_another_type_on_the_models_screen(models):
    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the app")
            screen = await select_model(pilot, app, "tiny-a")
            assert set(screen._statuses["tiny-a"].converted) == {DType.F32}
            await pilot.press("c")
            await wait_for(pilot, lambda: isinstance(app.screen, ChoiceDialog), what="the format choice")
            labels = [str(label) for label, _ in app.screen.choices]
            assert any(label.startswith("F32") and "already here" in label for label in labels)
            await choose(pilot, app, "Q8_0")
            await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the calibration text")
            await pilot.press("enter")  # empty: no calibration
            await wait_for(pilot, lambda: app.screen is screen, what="back to the models screen")
            assert any("convert Tiny A to Q8_0. F3" in n for n in notes(app))
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), what="the jobs screen")
            await wait_for(pilot, lambda: any("done" in n for n in notes(app)), what="the conversion")
            await pilot.pause(0.2)
            rows = job_rows(app)
            assert [(r.view.job.model_id, r.view.job.steps, r.view.job.state) for r in rows.values()] == \
                [("tiny-a", ("convert",), "done")]
            assert "tiny-a: convert to Q8_0 · done" in screen_text(app)
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, what="back to the models screen")
            status = screen._statuses["tiny-a"]
            assert set(status.converted) == {DType.F32, DType.Q8_0}
            assert status.converted[DType.Q8_0].is_file()
            assert status.converted[DType.F32] == models["tiny-a"]  # the user's own file stays where it is
            table = screen.query_one("#models-table")
            assert str(table.get_row("tiny-a")[5]) == "F32, Q8_0"
            assert "Q8_0: " in str(screen.query_one("#model-details").render())
            assert set(screen._statuses["tiny-b"].converted) == {DType.F32}

    asyncio.run(body())


def test_convert_with_a_calibration_text_on_the_models_screen(models, tmp_path):
    from runtime.formats.gguf_file import read_gguf

    text = tmp_path / "calib.txt"
    text.write_text("RWKV reads one token at a time and keeps a fixed-size state. " * 8)

    async def convert_with(pilot, app, screen, path: str) -> None:
        await pilot.press("c")
        await choose(pilot, app, "Q8_0")
        await wait_for(pilot, lambda: isinstance(app.screen, TextDialog), what="the calibration text")
        await type_text(pilot, path)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, what="back to the models screen")

    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the app")
            screen = await select_model(pilot, app, "tiny-a")
            await convert_with(pilot, app, screen, str(tmp_path / "missing.txt"))
            await wait_for(pilot, lambda: any("missing.txt not found" in n for n in notes(app)), what="the notice")
            assert app.jobs.list() == [] and app.jobs.runner.queue.list() == []
            await convert_with(pilot, app, screen, str(text))
            assert any("convert Tiny A to Q8_0, calibrated on calib.txt" in n for n in notes(app))
            [job] = app.jobs.runner.queue.list()
            assert job.calibrate == str(text)
            await wait_for(pilot, lambda: app.jobs.runner.queue.get(job.id).finished, what="the conversion")
            job = app.jobs.runner.queue.get(job.id)
            assert job.state == "done"
            meta = read_gguf(Path(job.result)).metadata
            assert meta["rwkv_tui.calibration.text"] == "calib.txt"
            assert meta["rwkv_tui.calibration.tokens"] > 0

    asyncio.run(body())


# --- 7. the jobs screen: rate and ETA of a running download ---------------------------------------


class _Trickle:
    """A server that sends a file 1 MB at a time with a pause between, and holds the rest back after
    `hold_after` megabytes until released (so the download stays running while the test looks)."""

    CHUNK = 1 << 20

    def __init__(self, data: bytes, delay: float = 0.25, hold_after: int = 4) -> None:
        self.data = data
        self.delay = delay
        self.hold_after = hold_after
        self.release = threading.Event()
        trickle = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(trickle.data)))
                self.end_headers()
                try:
                    for i, start in enumerate(range(0, len(trickle.data), trickle.CHUNK)):
                        if i == trickle.hold_after:
                            trickle.release.wait(30)
                        self.wfile.write(trickle.data[start:start + trickle.CHUNK])
                        self.wfile.flush()
                        time.sleep(trickle.delay)
                except OSError:  # the client went away (cancelled)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def __enter__(self) -> _Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_the_jobs_screen_shows_rate_and_eta_of_a_running_download(tui_home):
    data = bytes(range(256)) * (8 * 4096)  # 8 MiB
    # 6 MB flow over ~1.5 s before the hold: three times the 0.5 s a rate needs (with 4 MB over ~1 s,
    # one loaded CI run saw every progress event inside the first 0.5 s and no rate for 30 s)
    with _Trickle(data, hold_after=6) as server:
        add_entry("trickle", server.url("/RWKV-trickle.pth"), len(data))

        async def body():
            app = RwkvApp(show_welcome=False)
            async with app.run_test(size=SIZE) as pilot:
                await select_model(pilot, app, "trickle")
                await pilot.press("g", "f3")
                await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and job_rows(app),
                               what="the job row")
                row = next(iter(job_rows(app).values()))
                await wait_for(pilot, lambda: row.view.rate > 0 and row.view.eta is not None, timeout=30,
                               what="a rate and an ETA")
                await pilot.pause(0.1)
                assert row.view.job.state == "running"
                _, detail = describe(row.view)
                pattern = (r"downloading · [\d.]+ MB of 8\.4 MB \(\d+%\) · [\d.]+ [KM]B/s · "
                           r"\d+ (s|min \d\d s) left")
                assert re.fullmatch(pattern, detail), detail
                assert detail in screen_text(app)
                # the figures are plausible: about 4 MB/s while it flowed, the other half still to come
                assert 0.5e6 < row.view.rate < 50e6
                left = len(data) - row.view.progress.done
                assert left > 0 and row.view.eta == pytest.approx(left / row.view.rate, rel=0.01)
                row.focus()
                await pilot.press("x")
                server.release.set()
                await wait_for(pilot, lambda: row.view.job.state == "cancelled", timeout=30, what="the cancel")
                assert "/s" not in screen_text(app) and " left" not in screen_text(app)

        asyncio.run(body())


# --- 8. no network ------------------------------------------------------------------------------


def test_an_unreachable_download_address_fails_with_its_cause_and_the_app_keeps_running(models, monkeypatch):
    import runtime.registry.jobs as jobs

    class NoWait(jobs.JobRunner):  # the download retries with backoff; here the retries do not wait
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, sleep=lambda seconds: None, **kwargs)

    monkeypatch.setattr(jobs, "JobRunner", NoWait)
    url = refused_url("/x.pth")
    add_entry("offline", url, None)

    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the app")
            screen = await select_model(pilot, app, "offline")
            await pilot.press("g")
            await wait_for(pilot, lambda: any("failed" in n for n in notes(app)), timeout=30,
                           what="the failure notice")
            failure = next(n for n in notes(app) if "failed" in n)
            assert "offline" in failure and url in failure
            assert "could not reach 127.0.0.1" in failure and "refused" in failure.lower()
            severities = [n.severity for n in app._notifications if "failed" in n.title]
            assert severities == ["error"]
            # the app goes on: the model is still not downloaded, the jobs screen says why, a chat works
            assert app.is_running and app.screen is screen
            assert screen._statuses["offline"].state == "not downloaded"
            await pilot.press("f3")
            await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and job_rows(app), what="the jobs")
            assert "offline: download → convert to" in screen_text(app) and "failed" in screen_text(app)
            assert "refused" in screen_text(app).lower()
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is screen, what="the models screen")
            await select_model(pilot, app, "tiny-a")
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.chat and app.chat.panes, what="a chat tab")
            pane = app.chat.panes[0]
            await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the model")
            await send(pilot, pane, "Still here?")
            assert pane.conversation.messages[-1].role == "assistant"

    asyncio.run(body())


# --- 9. measured quality on the models screen -----------------------------------------------------


def test_the_models_screen_shows_the_measured_quality_of_an_evaluated_file(models):
    from runtime.eval.result import EvalResult
    from runtime.eval.store import evaluation_for, save_evaluation

    path = models["tiny-a"]
    st = path.stat()
    save_evaluation(EvalResult(
        label="tiny-a F32", path=str(path), file_bytes=st.st_size, matrices="F32", head="F32",
        fingerprint="0" * 16, reference="tiny-a.gguf", text="sample.txt", tokens_sha256="1" * 64,
        positions=512, positions_wanted=512, perplexity=12.3456, kl_mean=1.234e-4, kl_p99=5e-4, top1=0.875,
        max_logit_diff=0.01, tokens_per_second=345.67, is_reference=False, measured_at="2024-01-01T00:00:00Z",
        file_mtime_ns=st.st_mtime_ns,
    ))
    assert evaluation_for(path) is not None

    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.chat is not None, what="the app")
            screen = await select_model(pilot, app, "tiny-a")
            details = str(screen.query_one("#model-details").render())
            line = next(x for x in details.splitlines() if x.startswith("F32: "))
            assert line == (f"F32: {path}  · KL 1.23e-04, top-1 88%, perplexity 12.35, 345.7 tok/s"), line
            assert "KL 1.23e-04" in screen_text(app)
            # a file without a saved result says how to measure it
            await select_model(pilot, app, "tiny-b")
            details = str(screen.query_one("#model-details").render())
            assert "(not evaluated: `rwkv-tui eval` measures it)" in details
            assert "KL " not in details

    asyncio.run(body())
