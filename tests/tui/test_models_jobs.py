"""The models and jobs screens against a local HTTP server: get a model (download + convert) and chat
with it, see a failed job's reason, cancel a job."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runtime.registry.catalog import save_user_entry
from tests.registry.server import Behaviour, serve
from tests.support.synthetic import v4_state_dict
from tests.support.torch_writer import write_pth
from tests.tui.conftest import N_VOCAB, notes, screen_text, type_text, wait_for
from tests.tui.test_chat import SIZE, reply_to
from tests.tui.test_resume import choose
from tui.app import RwkvApp
from tui.screens.jobs import JobsScreen
from tui.screens.models import ModelsScreen
from tui.widgets.job_row import JobRow


@pytest.fixture(scope="module")
def served_pth(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("served") / "RWKV-served.pth"
    write_pth(path, v4_state_dict(n_layer=1, n_embd=32, n_vocab=N_VOCAB, seed=5))
    return path.read_bytes()


def add_entry(model_id: str, url: str, size: int | None) -> None:
    save_user_entry({"id": model_id, "name": f"Served {model_id}", "family": "testchat", "arch": "4",
                     "n_layer": 1, "n_embd": 32, "vocab": N_VOCAB, "file": url.rsplit("/", 1)[1], "url": url,
                     **({"size": size} if size else {})})


async def select_model(pilot, app, model_id: str) -> ModelsScreen:
    if not isinstance(app.screen, ModelsScreen):
        await pilot.press("f2")
    await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
    screen = app.screen
    table = screen.query_one("#models-table")
    row = table.get_row_index(model_id)
    table.move_cursor(row=row)
    await pilot.pause()
    return screen


def job_rows(app) -> dict[int, JobRow]:
    return {r.job_id: r for r in app.screen.query(JobRow)}


def test_get_a_model_from_the_registry_then_chat_with_it(tui_home, served_pth):
    with serve({"/RWKV-served.pth": served_pth, "/RWKV-flaky.pth": served_pth},
               Behaviour(status=[404])) as server:
        add_entry("missing", server.url("/RWKV-missing.pth"), None)
        add_entry("served", server.url("/RWKV-served.pth"), len(served_pth))

        async def body():
            app = RwkvApp(show_welcome=False)
            async with app.run_test(size=SIZE) as pilot:
                await wait_for(pilot, lambda: app.chat is not None, what="the app")
                # a model whose file is not on the server: the job fails and says why
                await select_model(pilot, app, "missing")
                await pilot.press("g")
                await wait_for(pilot, lambda: any("failed" in n for n in notes(app)), what="the failure notice")
                assert any("404" in n for n in notes(app))
                # a good one: download + convert in the background, progress on the jobs screen
                screen = await select_model(pilot, app, "served")
                assert "not downloaded" in screen_text(app)
                await pilot.press("g")
                await pilot.press("f3")
                await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen), what="the jobs screen")
                await wait_for(pilot, lambda: any("done" in n for n in notes(app)), what="the job to finish")
                await pilot.pause(0.2)
                rows = job_rows(app)
                states = {r.view.job.model_id: r.view.job.state for r in rows.values()}
                assert states == {"missing": "failed", "served": "done"}
                text = screen_text(app)
                assert "download → convert to Q8_0 · done" in text and "404" in text
                await pilot.press("escape")
                await wait_for(pilot, lambda: app.screen is screen, what="back to the models screen")
                status = screen._statuses["served"]
                assert status.ready and "ready" in screen_text(app)
                assert status.source is not None and status.source.exists()
                # set it as the default of its family (s), delete its downloaded source (d)
                await pilot.press("s")
                assert app.defaults() == {"testchat": "served"}
                await pilot.press("d")
                await choose(pilot, app, "the source")
                await wait_for(pilot, lambda: not status.source.exists(), what="the source to go")
                assert screen._statuses["served"].ready and screen._statuses["served"].source is None
                # enter on a ready model starts a chat with it
                await pilot.press("enter")
                await wait_for(pilot, lambda: app.screen is app.chat and app.chat.panes, what="a chat tab")
                pane = app.chat.panes[0]
                await wait_for(pilot, lambda: pane.model is not None and not pane.busy, what="the model")
                assert Path(pane.model.path).parent.name == "served"
                pane.prompt.focus()
                await type_text(pilot, "Hello served model")
                await reply_to(pilot, pane, "enter")
                assert pane.conversation.messages[-1].role == "assistant"

        asyncio.run(body())


def test_cancel_a_running_job_and_clear_finished_ones(tui_home, served_pth):
    with serve({"/RWKV-slow.pth": served_pth}, Behaviour(status=[503] * 50)) as server:
        add_entry("slow", server.url("/RWKV-slow.pth"), len(served_pth))

        async def body():
            app = RwkvApp(show_welcome=False)
            async with app.run_test(size=SIZE) as pilot:
                await select_model(pilot, app, "slow")
                await pilot.press("g", "f3")
                await wait_for(pilot, lambda: isinstance(app.screen, JobsScreen) and job_rows(app),
                               what="the job row")
                row = next(iter(job_rows(app).values()))
                await wait_for(pilot, lambda: row.view.job.state == "running", what="the job to run")
                row.focus()
                await pilot.press("x")
                await wait_for(pilot, lambda: row.view.job.state == "cancelled", timeout=30, what="the cancel")
                assert "cancelled" in screen_text(app)
                await pilot.press("ctrl+d")
                await wait_for(pilot, lambda: not job_rows(app), what="finished jobs cleared")
                assert "No jobs" in screen_text(app)

        asyncio.run(body())
