"""Which model file a name means: a registry id or a path (from `--model`, `chat MODEL`, a conversation).

Shared by the app and `rwkv-tui chat`, without Textual. A conversation records the registry id of its
model (`ModelChoice.ref`), or a file's path; `resolve_model_ref` turns either back into a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import RwkvError


class ModelNotFoundError(RwkvError, FileNotFoundError):
    """A conversation's model is neither a file on this machine nor a ready registry model."""


@dataclass(frozen=True)
class ModelChoice:
    """A runnable model file with the family (template) to use it with."""

    label: str
    path: Path
    ref: str  # what conversations record: the registry id
    family: str
    mode: str
    note: str = ""  # told to the user when the tab opens (why it is not the kind of tab asked for)


def families_for(families: dict[str, Any], family: str, mode: str | None) -> list[str]:
    """Families a model of `family` can be used with in `mode`: its own first, then same-tokenizer ones.
    A model that only continues text (a novel-mode family, e.g. a base Pile model) cannot chat."""
    own = families.get(family)
    if own is None:
        return []
    if mode is None or own.mode == mode:
        return [family]
    if mode == "chat":
        return []
    return [name for name, f in families.items() if f.mode == mode and f.tokenizer == own.tokenizer]


def choice_for(catalog: Any, families: dict[str, Any], path_or_id: str, mode: str | None = None) -> ModelChoice:
    """A model to open: a registry id, or a file (registered on the way). With no `mode`, a chat unless
    the model only continues text; then a novel tab, with a note saying why."""
    from runtime.registry.status import model_status, register_local

    if path_or_id in catalog.models:
        entry = catalog.models[path_or_id]
    else:
        path = Path(path_or_id).expanduser()
        if not path.exists():
            catalog.get(path_or_id)  # raises with close matches
        existing = next((e for e in catalog.models.values() if e.path is not None
                         and e.path == path.resolve()), None)
        entry = existing or register_local(path, catalog=catalog)
    status = model_status(entry)
    best = status.best_file()
    if best is None:
        raise ModelNotFoundError(f"'{entry.id}' is {status.state}: get it on the models screen (F2) or with "
                                 f"`rwkv-tui get {entry.id}`")
    family = families_for(families, entry.family, mode or "chat") or families_for(families, entry.family, mode)
    if not family:
        raise ModelNotFoundError(f"'{entry.id}' (family {entry.family}) has no {mode} template")
    fam = families[family[0]]
    note = "" if fam.mode == "chat" or mode == fam.mode else continues_only(entry.name, fam)
    return ModelChoice(entry.name, best, entry.id, fam.name, fam.mode, note)


def continues_only(name: str, family: Any) -> str:
    """Why a model opened in a novel tab rather than a chat."""
    return (f"{name} only continues text ({family.name}: {family.description}), so it opened in a novel tab: "
            "write the beginning of a text and it carries on. For a chat, get an instruction-tuned model "
            "(Raven or World) on the models screen (F2).")


def resolve_model_ref(catalog: Any, ref: str, *, hint: str = "press F4 to continue it with another model, "
                      "or F2 to get it") -> Path:
    """The file to load for a conversation's `model_ref` (a registry id or a path); `hint` ends the error."""
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    from runtime.registry.status import model_status

    entry = catalog.models.get(ref)
    if entry is None:
        entry = next((e for e in catalog.models.values() if e.path is not None and e.path.name == path.name), None)
    if entry is not None:
        best = model_status(entry).best_file()
        if best is not None:
            return best
    raise ModelNotFoundError(f"the model of this conversation, {ref}, is not on this machine; {hint}")
