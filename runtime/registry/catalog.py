"""The model registry: the shipped `models.toml` plus the user's own, validated entry by entry.

The shipped file lives in this package (`runtime/registry/models.toml`, so an installed copy finds
it); the repository's top-level `models.toml` is a symlink to it. The user's file,
`config_dir()/models.toml`, has the same schema: a `[[model]]` whose id is new adds a model, one
whose id is already known overrides the fields it names (so `url = "…"` alone points a shipped model
at a mirror). `[family.*]` tables (templates, sampling) belong to `runtime.text`; here only their
names matter, to check each model's `family`.

Loading never raises for a bad entry: it is skipped and reported with its file and line (tomllib
gives no line numbers, so the n-th `[[model]]` header is found by scanning the text). The warnings
travel with the catalog for the CLI and the app to show.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from runtime import paths
from runtime.atomic import atomic_write_bytes
from runtime.errors import RwkvError
from runtime.formats.detect import RUNNABLE_VERSIONS
from runtime.quant.types import DType

SHIPPED_PATH = Path(__file__).with_name("models.toml")
ARCHES = ("4", "5", "5.2", "6", "7")  # "5": an RWKV-5 whose minor version the entry does not say
VOCAB_BY_TOKENIZER = {"20b": 50277, "world": 65536}
TOKENIZER_BY_VOCAB = {v: k for k, v in VOCAB_BY_TOKENIZER.items()}
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
KNOWN_KEYS = frozenset({
    "id", "name", "family", "arch", "n_layer", "n_embd", "vocab", "tokenizer", "file", "url", "path", "size",
    "sha256", "recommended", "ram", "verified", "description",
})
_HEADER = re.compile(r"^\s*\[\[\s*model\s*\]\]\s*(#.*)?$")
_ANY_HEADER = re.compile(r"^\s*\[")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


class RegistryError(RwkvError, ValueError):
    """A registry entry or a request about one is invalid; the message says which and why."""


@dataclass(frozen=True)
class ModelEntry:
    """One model a user can download, convert and chat with."""

    id: str
    name: str
    family: str
    arch: str
    file: str
    url: str | None = None
    path: Path | None = None  # a local file registered with `rwkv-tui add`
    n_layer: int | None = None
    n_embd: int | None = None
    vocab: int | None = None
    tokenizer: str | None = None
    size: int | None = None
    sha256: str | None = None
    recommended: DType | None = None
    ram: Mapping[DType, int] = field(default_factory=dict)
    verified: str | None = None
    description: str | None = None
    origin: str = "shipped"  # "shipped", "user" or "user override"
    line: int | None = None

    @property
    def runnable(self) -> bool:
        """True if this version of the runtime can convert and run the architecture."""
        return self.arch in RUNNABLE_VERSIONS

    @property
    def has_shape(self) -> bool:
        return self.n_layer is not None and self.n_embd is not None and self.vocab is not None


@dataclass
class Catalog:
    """Every valid model by id (shipped order, then user additions), family names, load warnings."""

    models: dict[str, ModelEntry]
    families: dict[str, dict[str, Any]]
    warnings: list[str]
    shipped_path: Path
    user_path: Path

    def get(self, model_id: str) -> ModelEntry:
        """The entry for `model_id`; RegistryError naming close matches if there is none."""
        entry = self.models.get(model_id)
        if entry is None:
            close = difflib.get_close_matches(model_id, list(self.models), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else "; `rwkv-tui models` lists them"
            raise RegistryError(f"no model '{model_id}' in the registry{hint}")
        return entry

    def find_url(self, url: str) -> ModelEntry | None:
        return next((m for m in self.models.values() if m.url == url), None)


def user_path() -> Path:
    """The user's registry file (it need not exist)."""
    return paths.config_dir() / "models.toml"


def shipped_path() -> Path:
    return SHIPPED_PATH


# --- loading -------------------------------------------------------------------------------------


def load_catalog(shipped: Path | None = None, user: Path | None = None) -> Catalog:
    """Load and validate the shipped registry and the user's; bad entries become warnings."""
    return _load(shipped or SHIPPED_PATH, user or user_path())


def _load(shipped: Path, user: Path, user_text: str | None = None) -> Catalog:
    warnings: list[str] = []
    base = _read_file(shipped, warnings, required=True)
    extra = _read_file(user, warnings, required=False, text=user_text)
    families = dict(base.families)
    families.update(extra.families)

    models: dict[str, ModelEntry] = {}
    raw_by_id: dict[str, dict[str, Any]] = {}
    for raw, line in base.models:
        model_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(model_id, str) and model_id in models:
            warnings.append(f"{_where(shipped, line)}: model '{model_id}' is listed twice; this one is skipped")
            continue
        entry = _checked(raw, line, shipped, families, warnings, "shipped")
        if entry is None:
            continue
        models[entry.id] = entry
        raw_by_id[entry.id] = raw
    seen_user: set[str] = set()
    for raw, line in extra.models:
        model_id = raw.get("id") if isinstance(raw, dict) else None
        if isinstance(model_id, str) and model_id in seen_user:
            warnings.append(f"{_where(user, line)}: model '{model_id}' is listed twice; this one is skipped")
            continue
        if isinstance(model_id, str) and model_id in raw_by_id:
            merged = {**raw_by_id[model_id], **raw}
            entry = _checked(merged, line, user, families, warnings, "user override")
        else:
            entry = _checked(raw, line, user, families, warnings, "user")
        if entry is None:
            continue
        seen_user.add(entry.id)
        models[entry.id] = entry
    return Catalog(models, families, warnings, shipped, user)


@dataclass
class _FileContent:
    models: list[tuple[Any, int | None]] = field(default_factory=list)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)


def _read_file(path: Path, warnings: list[str], required: bool, text: str | None = None) -> _FileContent:
    try:
        if text is None:
            text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            warnings.append(f"{path}: the registry file is missing; no shipped models are listed")
        return _FileContent()
    except (OSError, UnicodeDecodeError) as e:
        warnings.append(f"{path}: cannot read the registry file ({e}); it is ignored")
        return _FileContent()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        warnings.append(f"{path}: not valid TOML ({e}); every entry in it is ignored")
        return _FileContent()
    out = _FileContent()
    fam = data.get("family", {})
    if isinstance(fam, dict):
        out.families = {k: v for k, v in fam.items() if isinstance(v, dict)}
    else:
        warnings.append(f"{path}: 'family' should be tables like [family.raven]; ignored")
    raw_models = data.get("model", [])
    if not isinstance(raw_models, list):
        warnings.append(f"{path}: 'model' should be [[model]] tables; ignored")
        return out
    lines = model_header_lines(text)
    if len(lines) != len(raw_models):  # written as an inline array: no header lines to point at
        lines = [None] * len(raw_models)
    out.models = list(zip(raw_models, lines, strict=True))
    return out


def model_header_lines(text: str) -> list[int]:
    """1-based line numbers of the `[[model]]` headers, skipping lines inside multi-line strings."""
    found = []
    delim: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if delim is None and _HEADER.match(line):
            found.append(number)
        delim = _string_state_after(line, delim)
    return found


def _table_header_lines(text: str) -> list[int]:
    headers = []
    delim: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if delim is None and _ANY_HEADER.match(line):
            headers.append(number)
        delim = _string_state_after(line, delim)
    return headers


_TOKENS = re.compile(r'"""|' + r"'''" + r'|"(?:[^"\\]|\\.)*"' + r"|'[^']*'|#")


def _string_state_after(line: str, delim: str | None) -> str | None:
    """Track multi-line strings: the delimiter (\"\"\" or ''') still open after `line`, or None."""
    pos = 0
    if delim is not None:
        pos = _close(line, 0, delim)
        if pos < 0:
            return delim
    while (m := _TOKENS.search(line, pos)) is not None:
        token = m.group()
        if token == "#":
            return None
        pos = m.end()
        if token in ('"""', "'''"):
            pos = _close(line, pos, token)
            if pos < 0:
                return token
    return None


def _close(line: str, start: int, delim: str) -> int:
    """Index just past the closing `delim` at or after `start`, or -1 if the string goes on."""
    while (j := line.find(delim, start)) >= 0:
        backslashes = len(line[:j]) - len(line[:j].rstrip("\\"))
        if delim == '"""' and backslashes % 2:
            start = j + 1
            continue
        return j + 3
    return -1


def _where(path: Path, line: int | None) -> str:
    return f"{path} line {line}" if line is not None else str(path)


def _checked(
    raw: Any, line: int | None, path: Path, families: Mapping[str, Any], warnings: list[str], origin: str
) -> ModelEntry | None:
    try:
        entry = entry_from_raw(raw, families, origin=origin, line=line)
    except RegistryError as e:
        label = raw.get("id") if isinstance(raw, dict) else None
        who = f"model '{label}'" if isinstance(label, str) else "a [[model]] entry"
        warnings.append(f"{_where(path, line)}: {who}: {e}; skipped")
        return None
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        warnings.append(f"{_where(path, line)}: model '{entry.id}': unknown keys ignored: {', '.join(unknown)}")
    return entry


# --- validation ----------------------------------------------------------------------------------


def entry_from_raw(
    raw: Any, families: Mapping[str, Any], *, origin: str = "user", line: int | None = None
) -> ModelEntry:
    """Validate one `[[model]]` table; RegistryError names the first problem found."""
    if not isinstance(raw, dict):
        raise RegistryError(f"expected a table of fields, got {type(raw).__name__}")
    model_id = _string(raw, "id", required=True)
    if not ID_PATTERN.match(model_id):
        raise RegistryError(
            f"id '{model_id}' must be 1-64 lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    name = _string(raw, "name", required=True)
    family = _string(raw, "family", required=True)
    if family not in families:
        known = ", ".join(sorted(families)) or "none"
        raise RegistryError(f"family '{family}' is not a [family.*] table (known: {known})")
    arch = raw.get("arch")
    if isinstance(arch, int) and not isinstance(arch, bool):
        arch = str(arch)
    if arch not in ARCHES:
        raise RegistryError(f"'arch' must be one of {', '.join(repr(a) for a in ARCHES)}, got {raw.get('arch')!r}")
    file = _string(raw, "file", required=True)
    if "/" in file or "\\" in file or file in (".", ".."):
        raise RegistryError(f"'file' must be a plain file name, got {file!r}")
    url = _string(raw, "url")
    if url is not None:
        _check_url(url, file)
    local = _string(raw, "path")
    path = Path(local).expanduser() if local is not None else None
    if path is not None and not path.is_absolute():
        raise RegistryError(f"'path' must be absolute, got {local!r}")
    if url is None and path is None:
        raise RegistryError("needs a 'url' to download from or a local 'path'")
    tokenizer = _string(raw, "tokenizer")
    if tokenizer is None:
        fam_tok = families[family].get("tokenizer") if isinstance(families[family], dict) else None
        tokenizer = fam_tok if fam_tok in VOCAB_BY_TOKENIZER else None
    elif tokenizer not in VOCAB_BY_TOKENIZER:
        raise RegistryError(f"'tokenizer' must be one of {', '.join(VOCAB_BY_TOKENIZER)}, got {tokenizer!r}")
    vocab = _positive(raw, "vocab")
    if vocab is None and tokenizer is not None:
        vocab = VOCAB_BY_TOKENIZER[tokenizer]
    sha = _string(raw, "sha256")
    if sha is not None:
        sha = sha.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise RegistryError(f"'sha256' must be 64 hexadecimal digits, got {raw['sha256']!r}")
    recommended = _dtype(raw.get("recommended"), "recommended") if "recommended" in raw else None
    ram_raw = raw.get("ram", {})
    if not isinstance(ram_raw, dict):
        raise RegistryError("'ram' must be a table like { q5_1 = 5000000000 }")
    ram = {}
    for key, value in ram_raw.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise RegistryError(f"'ram.{key}' must be a positive number of bytes, got {value!r}")
        ram[_dtype(key, f"ram.{key}")] = value
    return ModelEntry(
        id=model_id, name=name, family=family, arch=arch, file=file, url=url, path=path,
        n_layer=_positive(raw, "n_layer"), n_embd=_positive(raw, "n_embd"), vocab=vocab, tokenizer=tokenizer,
        size=_positive(raw, "size"), sha256=sha, recommended=recommended, ram=ram,
        verified=_string(raw, "verified"), description=_string(raw, "description"), origin=origin, line=line,
    )


def _string(raw: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise RegistryError(f"missing '{key}'")
        return None
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"'{key}' must be a non-empty string, got {value!r}")
    return value


def _positive(raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise RegistryError(f"'{key}' must be a positive integer, got {value!r}")
    return value


def _dtype(value: Any, key: str) -> DType:
    if not isinstance(value, str):
        raise RegistryError(f"'{key}' must name a format such as 'q5_1', got {value!r}")
    try:
        dtype = DType.parse(value)
    except ValueError as e:
        raise RegistryError(f"'{key}': {e}") from None
    if dtype is DType.BF16:
        raise RegistryError(f"'{key}': bf16 is a source format only")
    return dtype


def _check_url(url: str, file: str) -> None:
    parts = urlparse(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise RegistryError(f"'url' must be an http(s) address, got {url!r}")
    if _BAD_PERCENT.search(url):
        raise RegistryError(f"'url' has a bare '%': write it as %25 ({url!r})")
    if " " in url:
        raise RegistryError(f"'url' has a space: write it as %20 ({url!r})")
    last = unquote(parts.path.rsplit("/", 1)[-1])
    if last != file:
        raise RegistryError(f"'url' ends in {last!r}, which is not the entry's file {file!r}")


# --- the user's file -----------------------------------------------------------------------------


def entry_to_raw(entry: ModelEntry) -> dict[str, Any]:
    """An entry back as a `[[model]]` table (for rewriting it in the user's registry)."""
    raw: dict[str, Any] = {
        "id": entry.id, "name": entry.name, "family": entry.family, "arch": entry.arch,
        "n_layer": entry.n_layer, "n_embd": entry.n_embd, "vocab": entry.vocab, "tokenizer": entry.tokenizer,
        "file": entry.file, "url": entry.url, "path": str(entry.path) if entry.path else None,
        "size": entry.size, "sha256": entry.sha256,
        "recommended": entry.recommended.name.lower() if entry.recommended else None,
        "ram": {k.name.lower(): v for k, v in entry.ram.items()} or None,
        "verified": entry.verified, "description": entry.description,
    }
    return {k: v for k, v in raw.items() if v is not None}


def save_user_entry(raw: dict[str, Any], path: Path | None = None, shipped: Path | None = None) -> ModelEntry:
    """Add `raw` to the user's registry, replacing any entry with the same id; written atomically.

    The result is validated as the catalog would load it (an override of a shipped model merged
    with it) before anything is written: RegistryError, and the file untouched, if it is invalid.
    Other entries and the user's comments are kept as they are.
    """
    path = path or user_path()
    model_id = raw.get("id")
    if not isinstance(model_id, str):
        raise RegistryError("a model entry needs an 'id'")
    text = path.read_text(encoding="utf-8") if path.exists() else _USER_HEADER
    text = _remove_entry(text, model_id, path)
    if text and not text.endswith("\n"):
        text += "\n"
    text += "\n" + dump_entry(raw)
    catalog = _load(shipped or SHIPPED_PATH, path, user_text=text)
    entry = catalog.models.get(model_id)
    if entry is None or entry.origin == "shipped":
        problem = next((w for w in catalog.warnings if f"'{model_id}'" in w), f"model '{model_id}' is invalid")
        if problem.startswith(str(path)):
            problem = problem[len(str(path)):].split(": ", 1)[-1]
        raise RegistryError(problem.removesuffix("; skipped"))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    return entry


def remove_user_entry(model_id: str, path: Path | None = None) -> bool:
    """Remove `model_id` from the user's registry; False if it was not there."""
    path = path or user_path()
    if not path.exists():
        return False
    text = path.read_text(encoding="utf-8")
    new = _remove_entry(text, model_id, path)
    if new == text:
        return False
    atomic_write_bytes(path, new.encode("utf-8"))
    return True


_USER_HEADER = (
    "# rwkv-tui's user registry: same schema as the shipped models.toml. A [[model]] with a new id adds\n"
    "# a model; one with a known id overrides the fields it names. `rwkv-tui add` and `get URL` write here.\n"
)


def _remove_entry(text: str, model_id: str, path: Path) -> str:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{path}: not valid TOML ({e}); fix or move it before adding models") from None
    models = data.get("model", [])
    starts = model_header_lines(text)
    if not isinstance(models, list) or len(starts) != len(models):
        raise RegistryError(f"{path}: write each model as a [[model]] table before adding models")
    headers = _table_header_lines(text)
    lines = text.splitlines(keepends=True)
    drop: set[int] = set()
    for raw, start in zip(models, starts, strict=True):
        if isinstance(raw, dict) and raw.get("id") == model_id:
            end = next((h for h in headers if h > start), len(lines) + 1)
            while end - 1 > start and (not lines[end - 2].strip() or lines[end - 2].lstrip().startswith("#")):
                end -= 1  # comments just above the next table belong to it
            drop.update(range(start, end))
    return "".join(line for i, line in enumerate(lines, 1) if i not in drop)


def dump_entry(raw: Mapping[str, Any]) -> str:
    """One `[[model]]` table in TOML (strings, integers, and a `ram` inline table)."""
    out = ["[[model]]"]
    for key, value in raw.items():
        if value is None:
            continue
        out.append(f"{key} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Iterable):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: Any) -> str:
    key = key.name.lower() if isinstance(key, DType) else str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
