"""Where each model's files are, what state it is in, and housekeeping on them.

Layout under `data_dir()/models/<id>/`:

    <file>                    the downloaded source (only ever a verified, complete file)
    <file>.part               a download in progress or interrupted (resumable)
    <file>.sha256             the sha256 computed while downloading ("<hex>  <file>")
    <id>-<type>.gguf          a converted model, e.g. raven-7b-q5_1.gguf

A model registered with `rwkv-tui add` keeps its file where the user has it (`path` in the user
registry); it is never moved or deleted by rwkv-tui. A local GGUF or rwkv.cpp `.bin` is ready as it
is; a local `.pth` is a source that `get` converts into the model's folder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.quant.types import DType
from runtime.registry.catalog import (
    Catalog,
    ModelEntry,
    RegistryError,
    load_catalog,
    remove_user_entry,
    save_user_entry,
)

if TYPE_CHECKING:
    from runtime.registry.jobs import Job

NOT_DOWNLOADED = "not downloaded"
DOWNLOADING = "downloading"
PAUSED = "download paused"  # a .part file and no job working on it
SOURCE_ONLY = "source only"
CONVERTING = "converting"
READY = "ready"


def models_dir() -> Path:
    folder = paths.data_dir() / "models"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def model_dir(entry: ModelEntry) -> Path:
    return models_dir() / entry.id


def source_path(entry: ModelEntry) -> Path:
    """Where the model's source file is or will be."""
    return entry.path if entry.path is not None else model_dir(entry) / entry.file


def converted_path(entry: ModelEntry, dtype: DType) -> Path:
    return model_dir(entry) / f"{entry.id}-{dtype.name.lower()}.gguf"


def sha256_sidecar(entry: ModelEntry) -> Path:
    return model_dir(entry) / f"{entry.file}.sha256"


def read_sidecar(entry: ModelEntry) -> str | None:
    """The sha256 recorded when the source was downloaded, if any."""
    try:
        text = sha256_sidecar(entry).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    m = re.match(r"([0-9a-f]{64})\b", text)
    return m.group(1) if m else None


@dataclass
class ModelStatus:
    entry: ModelEntry
    state: str
    source: Path | None  # the complete source file, if present
    partial_bytes: int  # bytes in the .part file (0 if none)
    converted: dict[DType, Path] = field(default_factory=dict)
    disk_bytes: int = 0  # everything in the model's folder (a local file elsewhere is not counted)
    job_id: int | None = None

    @property
    def ready(self) -> bool:
        return bool(self.converted)

    @property
    def own(self) -> bool:
        """Registered from the user's own file (`rwkv-tui add`), which stays where it is."""
        return self.entry.path is not None

    @property
    def bytes_on_disk(self) -> int:
        """The model's folder plus the user's own file, wherever it is."""
        own_file = self.source.stat().st_size if self.own and self.source is not None else 0
        return self.disk_bytes + own_file

    @property
    def here(self) -> bool:
        """Anything of this model on this machine (files, a partial download) or a job for it."""
        return self.own or self.state != NOT_DOWNLOADED

    def best_type(self) -> DType | None:
        """The type of the file `best_file()` gives (what a chat on this model runs), None if none."""
        best = self.best_file()
        return next((t for t, p in self.converted.items() if p == best), None)

    def best_file(self, prefer: DType | None = None) -> Path | None:
        """A runnable file: `prefer` if converted, else the highest-quality conversion."""
        if prefer in self.converted:
            return self.converted[prefer]
        from runtime.registry.recommend import QUALITY_ORDER

        for dtype in sorted(self.converted, key=lambda t: QUALITY_ORDER.index(t) if t in QUALITY_ORDER else 99):
            return self.converted[dtype]
        return None


def model_status(entry: ModelEntry, jobs: Iterable[Job] = ()) -> ModelStatus:
    """Status of `entry` from the files on disk and, if given, the job queue's unfinished jobs."""
    folder = models_dir() / entry.id
    src = source_path(entry)
    source = src if src.is_file() else None
    part = folder / f"{entry.file}.part"
    partial = part.stat().st_size if part.is_file() else 0
    converted: dict[DType, Path] = {}
    if folder.is_dir():
        prefix = f"{entry.id}-"
        for p in folder.glob(f"{entry.id}-*.gguf"):
            try:
                converted[DType.parse(p.name[len(prefix):-len(".gguf")])] = p
            except ValueError:
                continue
    if entry.path is not None and source is not None:
        local = _local_runnable_type(source)
        if local is not None:
            converted.setdefault(local, source)
    disk = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
    job = next((j for j in jobs if j.model_id == entry.id and not j.finished), None)
    if job is not None and job.state == "running":
        state = CONVERTING if job.step == "convert" else DOWNLOADING
    elif converted:
        state = READY
    elif source is not None:
        state = SOURCE_ONLY
    elif partial or job is not None:
        state = PAUSED
    else:
        state = NOT_DOWNLOADED
    return ModelStatus(entry, state, source, partial, converted, disk, job.id if job is not None else None)


def _local_runnable_type(path: Path) -> DType | None:
    """The matrix type of a local GGUF / rwkv.cpp file (runnable as is), None for other sources."""
    from runtime.errors import RwkvError
    from runtime.formats.checkpoint import open_checkpoint, sniff_format

    try:
        kind = sniff_format(path)
        if kind not in ("gguf", "rwkvcpp"):
            return None
        ckpt = open_checkpoint(path)
    except (RwkvError, OSError):
        return None
    name = ckpt.metadata.get("rwkv_tui.quant.matrices") or ckpt.metadata.get("rwkvcpp.data_type")
    if name is None:
        name = ckpt.tensors["blocks.0.att.key.weight"].dtype.name
    try:
        return DType.parse(str(name))
    except ValueError:
        return None


def all_statuses(catalog: Catalog | None = None, jobs: Iterable[Job] = ()) -> list[ModelStatus]:
    """Every registry model's status, in the order lists show them: the user's own and the ones on this
    machine first, then the rest (each group in registry order)."""
    catalog = catalog or load_catalog()
    jobs = list(jobs)
    statuses = [model_status(e, jobs) for e in catalog.models.values()]
    return sorted(statuses, key=lambda s: not s.here)


# --- housekeeping --------------------------------------------------------------------------------


def delete_source(entry: ModelEntry) -> int:
    """Delete the downloaded source once a converted file exists; returns the bytes freed.

    Refuses (RegistryError) when nothing is converted yet, and never deletes a file registered with
    `rwkv-tui add` (it is the user's, outside rwkv-tui's folder).
    """
    status = model_status(entry)
    if entry.path is not None:
        raise RegistryError(f"{entry.path} is your own file (added with `rwkv-tui add`); rwkv-tui does not delete it")
    if status.source is None:
        return 0
    if not any(p != status.source for p in status.converted.values()):
        raise RegistryError(f"'{entry.id}' has no converted file yet; deleting {status.source.name} would lose it")
    freed = status.source.stat().st_size
    status.source.unlink()
    return freed


def delete_files(entry: ModelEntry, dtype: DType | None = None) -> int:
    """Delete one converted format, or (dtype None) everything in the model's folder. Bytes freed."""
    folder = model_dir(entry)
    if dtype is not None:
        targets = [converted_path(entry, dtype)]
    else:
        targets = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    freed = 0
    for p in targets:
        if p.is_file():
            freed += p.stat().st_size
            p.unlink()
    if dtype is None and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return freed


# --- registering local files ---------------------------------------------------------------------


def slug(text: str) -> str:
    """A registry id from a file name: lowercase, runs of other characters turned into '-'."""
    s = re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._-]+", "-", text.lower())).strip("-._")
    return (s or "model")[:64].rstrip("-._")


def register_local(
    path: str | Path,
    *,
    model_id: str | None = None,
    name: str | None = None,
    family: str | None = None,
    catalog: Catalog | None = None,
) -> ModelEntry:
    """Add a local `.pth`, `.bin` or `.gguf` to the user registry, reading its shape from the file.
    Adding a file again updates its entry: the id, name and family set before stay unless given."""
    from runtime.formats.checkpoint import open_checkpoint
    from runtime.text.templates import guess_family

    path = Path(path).expanduser().resolve()
    ckpt = open_checkpoint(path)  # ModelFileError / UnsupportedModelError name the file and the problem
    arch = ckpt.arch
    catalog = catalog or load_catalog()
    stem = path.name.removesuffix(".gguf").removesuffix(".bin").removesuffix(".pth")
    taken = {k for k, e in catalog.models.items() if e.path != path}
    earlier = next((e for e in catalog.models.values() if e.path == path), None)
    if earlier is not None:  # added before: what was set then stays unless given again
        model_id = model_id or earlier.id
        name = name or earlier.name
        family = family or earlier.family
    if model_id is not None and model_id in taken:
        raise RegistryError(f"the id '{model_id}' is already used by {catalog.models[model_id].name}; choose another")
    model_id = model_id or slug(stem)
    if model_id in taken:
        model_id = next(f"{model_id}-{n}" for n in range(2, 10_000) if f"{model_id}-{n}" not in taken)
    raw = {
        "id": model_id,
        "name": name or stem,
        "family": family or guess_family(stem, vocab=arch.n_vocab, families=catalog.families),
        "arch": arch.version,
        "n_layer": arch.n_layer,
        "n_embd": arch.n_embd,
        "vocab": arch.n_vocab,
        "file": path.name,
        "path": str(path),
        "size": path.stat().st_size if path.is_file() else None,
        "verified": "registered from a local file with `rwkv-tui add`",
    }
    return save_user_entry(raw, catalog.user_path, catalog.shipped_path)


def guess_arch(name: str) -> str:
    """Architecture from BlinkDL's naming: RWKV-5…, RWKV-x060…, rwkv7-…; RWKV-4 otherwise."""
    low = name.lower()
    for arch, marks in (("7", ("x070", "rwkv7", "rwkv-7")), ("6", ("x060", "rwkv6", "rwkv-6")),
                        ("5", ("x052", "rwkv-5", "rwkv5"))):
        if any(m in low for m in marks):
            return arch
    return "4"


def register_url(url: str, *, sha256: str | None = None, catalog: Catalog | None = None) -> ModelEntry:
    """Register a download address that is not in the registry yet (its shape is read after download)."""
    from urllib.parse import unquote, urlparse

    from runtime.text.templates import guess_family

    catalog = catalog or load_catalog()
    known = catalog.find_url(url)
    if known is not None:
        return known
    file = unquote(urlparse(url).path.rsplit("/", 1)[-1])
    if not file:
        raise RegistryError(f"{url} does not end in a file name")
    stem = file.removesuffix(".pth")
    model_id = slug(stem)
    if model_id in catalog.models:
        model_id = next(f"{model_id}-{n}" for n in range(2, 10_000) if f"{model_id}-{n}" not in catalog.models)
    raw = {
        "id": model_id,
        "name": stem,
        "family": guess_family(stem, families=catalog.families),
        "arch": guess_arch(stem),
        "file": file,
        "url": url,
        "sha256": sha256,
        "verified": "registered from a URL with `rwkv-tui get`" + ("; sha256 given by the user" if sha256 else ""),
    }
    return save_user_entry({k: v for k, v in raw.items() if v is not None}, catalog.user_path, catalog.shipped_path)


def forget_failed_url(entry: ModelEntry, catalog: Catalog | None = None) -> bool:
    """Undo `register_url` after the model's first download failed: the user entry goes, and so does
    its folder unless it holds the bytes of a resumable `.part` (a later `get` of the same address
    registers the same id again and resumes from it). A model whose source did arrive stays.
    Returns whether the entry was removed."""
    if entry.origin == "shipped" or entry.path is not None or source_path(entry).is_file():
        return False
    catalog = catalog or load_catalog()
    removed = remove_user_entry(entry.id, catalog.user_path)
    folder = model_dir(entry)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_file() and p.stat().st_size == 0:
                p.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed
