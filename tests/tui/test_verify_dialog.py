"""The app's verify dialog: a sound file, a damaged one (tensor, row and column named), one that cannot
be opened, and closing it while it reads."""

from __future__ import annotations

import asyncio
import re
import struct
import time

from runtime.formats.checkpoint import open_checkpoint
from tests.tui.conftest import notes, screen_text, wait_for
from tui.app import RwkvApp
from tui.screens.verify import VerifyDialog

SIZE = (110, 32)


def squash(text: str) -> str:
    """Screen text without spaces, line ends and border glyphs (wrapped lines join up again)."""
    return re.sub(r"[\s█▎▊▏│▔▁▄]", "", text)


def run_dialog(path, until=lambda dialog: dialog.verdict is not None):
    """Open the dialog on `path` in the app; (verdict, the dialog's text, what it dismissed with)."""
    result: dict = {}

    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()  # the app's own first screens are up
            dismissed: list = []
            dialog = VerifyDialog(path)
            app.push_screen(dialog, dismissed.append)
            await wait_for(pilot, lambda: until(dialog), what="the verdict")
            await pilot.pause()
            result["text"] = squash(screen_text(app))
            result["verdict"] = dialog.verdict
            await pilot.press("escape")
            await wait_for(pilot, lambda: dismissed, what="the dialog to close")
            result["dismissed"] = dismissed[0]

    asyncio.run(body())
    return result


def test_a_sound_file(models):
    r = run_dialog(models["tiny-a"])
    assert r["verdict"] == r["dismissed"] == "ok"
    n = len(open_checkpoint(models["tiny-a"]).tensors)
    assert squash("Verifying tiny-a.gguf") in r["text"]
    assert squash(f"All {n} tensors are finite and within ±1e+09: the file is sound.") in r["text"]


def test_a_damaged_file_names_the_tensor_row_and_column(models, tmp_path):
    path = tmp_path / "damaged.gguf"
    path.write_bytes(models["tiny-b"].read_bytes())
    head = open_checkpoint(path).tensors["head.weight"]  # F32
    with open(path, "r+b") as f:
        f.seek(head.offset + 4 * (3 * 32 + 30))
        f.write(struct.pack("<f", float("inf")))
    r = run_dialog(path)
    assert r["verdict"] == "damaged"
    assert squash("Damaged: tensor 'head.weight' row 3, column 30 holds inf: infinite.") in r["text"]


def test_a_file_that_cannot_be_opened(tmp_path, models):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(10))
    r = run_dialog(path)
    assert r["verdict"] == "error"
    assert squash("broken.gguf: file is truncated") in r["text"], r["text"]


def test_closing_while_it_reads_cancels(models, monkeypatch):
    from runtime import verify
    from runtime.errors import CancelledError

    seen: list[str] = []

    def slow_verify(ckpt, progress, cancel):  # reads until told to stop
        seen.append("started")
        while not cancel.cancelled:
            time.sleep(0.01)
        seen.append("cancelled")
        raise CancelledError("cancelled")

    monkeypatch.setattr(verify, "verify_tensors", slow_verify)
    r = run_dialog(models["tiny-a"], until=lambda dialog: seen == ["started"])
    assert r["verdict"] is None and r["dismissed"] is None
    assert squash("Reading every tensor") in r["text"]
    deadline = time.monotonic() + 10  # the worker thread notices the cancel on its next poll
    while seen != ["started", "cancelled"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == ["started", "cancelled"]


def test_the_models_screen_verifies_the_selected_models_file(models):
    from tests.tui.test_models_jobs import add_entry, select_model

    add_entry("elsewhere", "https://example.invalid/RWKV-elsewhere.pth", None)  # nothing on disk

    async def body():
        app = RwkvApp(show_welcome=False)
        async with app.run_test(size=SIZE) as pilot:
            await select_model(pilot, app, "tiny-b")
            await pilot.press("v")
            await wait_for(pilot, lambda: isinstance(app.screen, VerifyDialog), what="the verify dialog")
            dialog = app.screen
            assert dialog.path == models["tiny-b"]
            await wait_for(pilot, lambda: dialog.verdict is not None, what="the verdict")
            assert dialog.verdict == "ok"
            await pilot.press("escape")
            screen = await select_model(pilot, app, "elsewhere")
            await pilot.press("v")
            await pilot.pause()
            assert app.screen is screen
            assert "No file of Served elsewhere is on disk to verify." in " ".join(notes(app))

    asyncio.run(body())
