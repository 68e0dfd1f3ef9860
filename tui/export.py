"""Text helpers for the app: a conversation as a Markdown document, where it is saved, code blocks in a message."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.text.templates import split_reply


def code_blocks(text: str) -> list[str]:
    """The contents of the fenced code blocks in `text`, in order (an unclosed last fence counts)."""
    blocks: list[str] = []
    fence: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None:
            if stripped.startswith(("```", "~~~")):
                fence, body = stripped[:3], []
        elif stripped == fence:
            blocks.append("\n".join(body))
            fence = None
        else:
            body.append(line)
    if fence is not None and body:
        blocks.append("\n".join(body))
    return blocks


def speaker(role: str, mode: str, model_name: str) -> str:
    if role == "user":
        return "You"
    if role == "assistant":
        return model_name if mode == "chat" else "Model"
    return "Text"


def conversation_markdown(title: str, mode: str, model_name: str, messages: Iterable[Any],
                          when: float | None = None) -> str:
    """A conversation as Markdown: a title, then each message under its speaker (chat) or as one
    continuous text (novel). A reply's reasoning (thinking models) goes in a folded <details> block."""
    stamp = datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M") if when else ""
    lines = [f"# {title}", "", f"*{mode} with {model_name}{', ' + stamp if stamp else ''}*", ""]
    if mode == "novel":
        lines.append("".join(m.content for m in messages if m.role != "init"))
        lines.append("")
        return "\n".join(lines)
    for m in messages:
        if m.role == "init":
            continue
        lines.append(f"**{speaker(m.role, mode, getattr(m, 'model', '') or model_name)}:**")
        lines.append("")
        think = getattr(m, "think", None) if m.role == "assistant" else None
        thinking, answer = split_reply(m.content, think)
        if thinking is not None and thinking.strip():  # a thinking model's reasoning, folded
            lines += ["<details><summary>Thinking</summary>", "", thinking.strip(), "", "</details>", ""]
        lines.append(answer.strip())
        lines.append("")
    return "\n".join(lines)


def slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^\w-]+", "-", text.strip().lower()).strip("-")
    return (s[:limit].rstrip("-")) or "conversation"


def export_folder() -> Path:
    """Where ctrl+s proposes to save a conversation: your Documents folder (XDG_DOCUMENTS_DIR on Linux),
    or your home folder when there is none. Not the folder the app was started from, which is often
    a project, or wherever the terminal happened to be."""
    import platformdirs

    documents = Path(platformdirs.user_documents_dir())
    return documents if documents.is_dir() else Path.home()


def export_path(title: str, folder: Path | None = None) -> Path:
    """A new file for the conversation `title` in `folder` (default `export_folder()`): its slug, then
    "-2", "-3", … so an earlier export is never replaced unasked."""
    folder = folder if folder is not None else export_folder()
    name = slug(title)
    path = folder / f"{name}.md"
    n = 2
    while path.exists():
        path = folder / f"{name}-{n}.md"
        n += 1
    return path
