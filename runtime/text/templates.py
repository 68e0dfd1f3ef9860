"""Model families: how to talk to each kind of model, read from the `[family.*]` tables of models.toml.

A family says whether its models chat in turns or continue free text, what is fed at the start
(`init`), how a user message is wrapped (`user`, with `{message}`), what follows a finished reply
(`separator`) and where a reply stops (`stop`). The text fed to the model for a whole conversation is
always the same function of its messages (`Family.fed_text`), whether the messages are being
generated live or re-read for another model, so states built either way describe the same context.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import RwkvError
from runtime.text.sampling import SamplingSettings

MODES = ("chat", "novel")
_KEYS = {"description", "mode", "tokenizer", "init", "user", "separator", "stop", "sampling"}


class FamilyError(RwkvError, ValueError):
    """A `[family.*]` table in a models.toml is malformed."""


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    mode: str
    tokenizer: str
    init: str
    user: str
    separator: str
    stop: tuple[str, ...]
    sampling: SamplingSettings

    def user_turn(self, message: str) -> str:
        """What is fed for a user message (chat: blank lines folded, as these models expect)."""
        if self.mode == "chat":
            message = fold_blank_lines(message.strip())
        return self.user.replace("{message}", message)

    def fed_text(self, role: str, content: str, complete: bool, previous_complete: bool) -> str:
        """The text a message adds to the model's context.

        `previous_complete` is False after a reply that was cut short (stopped or length): its
        separator was never fed, so it is fed before the next user message.
        """
        if role == "init":
            return content
        if role in ("user", "text"):
            prefix = "" if previous_complete else self.separator
            return prefix + (self.user_turn(content) if role == "user" else content)
        if role == "assistant":
            return content + (self.separator if complete else "")
        raise ValueError(f"unknown message role {role!r}")


def fold_blank_lines(text: str) -> str:
    """Replace every run of blank lines by a single newline ("\\n\\n" separates speakers)."""
    text = text.replace("\r\n", "\n")
    while "\n\n" in text:
        text = text.replace("\n\n", "\n")
    return text


def _parse(name: str, table: object, source: str) -> Family:
    where = f"{source}: [family.{name}]"
    if not isinstance(table, dict):
        raise FamilyError(f"{where} must be a table")
    unknown = set(table) - _KEYS
    if unknown:
        raise FamilyError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    mode = table.get("mode", "chat")
    if mode not in MODES:
        raise FamilyError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    strings = {}
    for key, default in (("description", name), ("tokenizer", "20b"), ("init", ""), ("user", "{message}"),
                         ("separator", "")):
        value = table.get(key, default)
        if not isinstance(value, str):
            raise FamilyError(f"{where}: {key} must be a string")
        strings[key] = value
    if "{message}" not in strings["user"]:
        raise FamilyError(f"{where}: user must contain {{message}}")
    stop = table.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise FamilyError(f"{where}: stop must be a list of non-empty strings")
    sampling_table = table.get("sampling", {})
    if not isinstance(sampling_table, dict):
        raise FamilyError(f"{where}: sampling must be a table")
    try:
        sampling = SamplingSettings.from_dict(sampling_table)
    except ValueError as e:
        raise FamilyError(f"{where}.sampling: {e}") from None
    return Family(name=name, mode=mode, stop=tuple(stop), sampling=sampling, **strings)


def shipped_catalog() -> Path:
    """The models.toml that ships with rwkv-tui."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "registry" / "models.toml", here.parents[1] / "models.toml"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("rwkv-tui's models.toml is missing from the installation")


def user_catalog() -> Path:
    from runtime.paths import config_dir

    return config_dir() / "models.toml"


def load_families(paths: Iterable[Path] | None = None) -> dict[str, Family]:
    """Every valid family by name (see `read_families` for the warnings about invalid ones)."""
    return read_families(paths)[0]


def read_families(paths: Iterable[Path] | None = None) -> tuple[dict[str, Family], list[str]]:
    """Families from the shipped models.toml, then the user's (same name: the user's wins).

    Returns (families, warnings): a malformed family is skipped with a warning, never fatal, except
    that the shipped file must be readable.
    """
    if paths is None:
        paths = [shipped_catalog(), user_catalog()]
    families: dict[str, Family] = {}
    warnings: list[str] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            warnings.append(f"{path}: not valid TOML ({e}); its families are ignored")
            continue
        tables = data.get("family", {})
        if not isinstance(tables, dict):
            warnings.append(f"{path}: 'family' must be a table of tables")
            continue
        for name, table in tables.items():
            try:
                families[name] = _parse(name, table, str(path))
            except FamilyError as e:
                warnings.append(str(e))
    return families, warnings


def get_family(name: str, families: dict[str, Family] | None = None) -> Family:
    families = families if families is not None else load_families()
    try:
        return families[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r}; known: {', '.join(sorted(families))}") from None


WORLD_VOCAB = 65536  # the World tokenizer's vocabulary size


def guess_family(file_name: str, tokenizer_name: str | None = None, *, vocab: int | None = None,
                 families: Iterable[str] | None = None) -> str:
    """The family of a model file the registry does not know; `add`, `get URL`, `chat` and the app all
    guess with this. A family named in the file (BlinkDL's RWKV-4-Novel-…, -World-, -Pile-, -Raven-),
    else World for the World tokenizer (by name or vocabulary size), else Raven: an unnamed RWKV-4 file
    (rwkv4-…) is taken for a chat model, not for a base model that only continues text. `families`,
    when given, limits the answer to the families known there."""
    known = None if families is None else set(families)

    def usable(name: str) -> bool:
        return known is None or name in known

    lower = file_name.lower()
    for hint in ("novel", "world", "pile", "raven"):
        if hint in lower and usable(hint):
            return hint
    world = tokenizer_name == "rwkv-world" or vocab == WORLD_VOCAB
    for name in ("world", "raven") if world else ("raven",):
        if usable(name):
            return name
    return sorted(known)[0] if known else "raven"
