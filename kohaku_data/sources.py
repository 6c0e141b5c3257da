"""Where a post's image bytes live: a folder of `<id>.<ext>` files or danbooru2023 tars.

    source = open_source(Path("raw/"))
    for entry in source.entries():          # one entry per post id, sorted by id
        data = read_entry(entry)            # works in any process: entries are plain data
    source.rejects                          # what was refused, with a reason

Tars are indexed from their headers only (member data offsets), never unpacked. Members whose
names would leave the tree, links and other non-regular members are refused. Files under an
`updates/` folder win over older copies of the same id.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kohaku_data.errors import KdataError

IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "jfif", "png", "webp", "avif", "gif", "bmp", "tif", "tiff"}
)
UPDATES_DIR = "updates"


class SourceError(KdataError):
    """A source folder or file cannot be read."""


@dataclass(frozen=True, order=True, slots=True)
class SourceEntry:
    """One image file: its post id and how to read its bytes (picklable, no open handles)."""

    key: int
    name: str  # display name relative to the source root, e.g. "data-0001.tar:1001.jpg"
    ext: str  # lower case, no dot
    size: int
    path: str  # the file itself, or the tar that holds it
    member: str | None = None  # tar member name
    offset: int | None = None  # byte offset of the member's data in the tar


@dataclass(frozen=True)
class SourceReject:
    name: str
    reason: str  # unsafe_member_name | tar_link | corrupt_tar | corrupt_tar_member |
    #              not_a_post_id | unsupported_extension | duplicate_key
    detail: str = ""


@dataclass
class Source:
    root: Path
    _entries: list[SourceEntry] = field(default_factory=list)
    rejects: list[SourceReject] = field(default_factory=list)

    def entries(self) -> list[SourceEntry]:
        return list(self._entries)

    def fingerprint(self) -> str:
        """sha256 of the kept input list (names and sizes): changes when the inputs change."""
        digest = hashlib.sha256()
        for entry in self._entries:
            digest.update(f"{entry.key}\t{entry.name}\t{entry.size}\n".encode())
        return digest.hexdigest()


def open_source(path: str | Path) -> Source:
    """Index a folder (recursively; plain files and `.tar` files) or a single tar."""
    root = Path(path)
    if not root.exists():
        raise SourceError(f"source {root} does not exist: pass a folder of <id>.<ext> files or tars")
    candidates: list[SourceEntry] = []
    rejects: list[SourceReject] = []
    for file_path in _walk(root):
        rel = file_path.relative_to(root).as_posix() if root.is_dir() else file_path.name
        if file_path.suffix.lower() == ".tar":
            _index_tar(file_path, rel, candidates, rejects)
        else:
            _add_file(file_path, rel, candidates, rejects)
    return Source(root, _pick_winners(candidates, rejects), rejects)


def read_entry(entry: SourceEntry) -> bytes:
    """The bytes of one entry. Raises SourceError when the file changed or was cut short."""
    try:
        with open(entry.path, "rb") as f:
            if entry.offset is not None:
                f.seek(entry.offset)
            data = f.read(entry.size)
    except OSError as exc:
        raise SourceError(f"cannot read {entry.name}: {exc}") from exc
    if len(data) != entry.size:
        raise SourceError(f"{entry.name}: expected {entry.size} bytes, read {len(data)} (file changed or cut short)")
    return data


# -- scanning --------------------------------------------------------------------------------
def _walk(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith("."))
    return found


def _parse_name(name: str) -> tuple[int | None, str]:
    stem, _, ext = PurePosixPath(name).name.partition(".")
    key = int(stem) if stem.isdigit() else None
    return key, ext.lower()


def _add_file(path: Path, rel: str, out: list[SourceEntry], rejects: list[SourceReject]) -> None:
    key, ext = _parse_name(rel)
    if ext not in IMAGE_EXTENSIONS:
        rejects.append(SourceReject(rel, "unsupported_extension", f"extension {ext!r} is not an image type"))
    elif key is None:
        rejects.append(SourceReject(rel, "not_a_post_id", "file name must be <post id>.<ext>"))
    else:
        out.append(SourceEntry(key, rel, ext, path.stat().st_size, str(path)))


def _index_tar(path: Path, rel: str, out: list[SourceEntry], rejects: list[SourceReject]) -> None:
    file_size = path.stat().st_size
    tar_path = str(path)  # one string shared by every member's entry (millions of entries)
    try:
        with tarfile.open(path, "r:") as tar:
            for member in _members(tar, rel, rejects):
                _add_member(tar_path, rel, member, file_size, out, rejects)
    except (tarfile.TarError, OSError) as exc:
        rejects.append(SourceReject(rel, "corrupt_tar", str(exc)))


def _members(tar: tarfile.TarFile, rel: str, rejects: list[SourceReject]):
    """Members one by one, keeping those read before a corrupt header."""
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            rejects.append(SourceReject(rel, "corrupt_tar", f"unreadable header after the members kept: {exc}"))
            return
        if member is None:
            return
        yield member


def _add_member(tar_path: str, rel: str, member: tarfile.TarInfo, file_size: int,
                out: list[SourceEntry], rejects: list[SourceReject]) -> None:
    name = f"{rel}:{member.name}"
    if member.isdir():
        return
    if not _is_safe_member_name(member.name):
        rejects.append(SourceReject(name, "unsafe_member_name", "absolute or leaves the tree"))
    elif member.issym() or member.islnk():
        rejects.append(SourceReject(name, "tar_link", f"link to {member.linkname!r} refused"))
    elif not member.isreg():
        rejects.append(SourceReject(name, "corrupt_tar_member", "not a regular file"))
    elif member.offset_data + member.size > file_size:
        rejects.append(SourceReject(name, "corrupt_tar_member", "data runs past the end of the tar"))
    else:
        key, ext = _parse_name(member.name)
        if ext not in IMAGE_EXTENSIONS:
            rejects.append(SourceReject(name, "unsupported_extension", f"extension {ext!r} is not an image type"))
        elif key is None:
            rejects.append(SourceReject(name, "not_a_post_id", "member name must be <post id>.<ext>"))
        else:
            out.append(SourceEntry(key, name, ext, member.size, tar_path, member.name, member.offset_data))


def _is_safe_member_name(name: str) -> bool:
    if not name or name.startswith(("/", "\\")) or "\\" in name or ":" in PurePosixPath(name).parts[0]:
        return False
    return ".." not in PurePosixPath(name).parts


def _pick_winners(candidates: list[SourceEntry], rejects: list[SourceReject]) -> list[SourceEntry]:
    """One entry per key: an `updates/` copy beats the rest; otherwise the first by name."""
    ranked = sorted(candidates, key=lambda e: (e.key, not _in_updates(e), e.name))
    winners: list[SourceEntry] = []
    for entry in ranked:
        if winners and winners[-1].key == entry.key:
            if _in_updates(winners[-1]) and not _in_updates(entry):
                continue  # an older copy replaced by an update: expected, not a reject
            rejects.append(SourceReject(entry.name, "duplicate_key", f"post {entry.key} also in {winners[-1].name}"))
            continue
        winners.append(entry)
    return winners


def _in_updates(entry: SourceEntry) -> bool:
    return UPDATES_DIR in PurePosixPath(entry.name.split(":", 1)[0]).parts[:-1]
