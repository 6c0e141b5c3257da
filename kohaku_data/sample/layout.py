"""Where sample images go: a folder of `raw/<id>.<ext>`, or danbooru2023's tar layout
(`raw/data-0XXX.tar`, XXX = id % 1000 zero-padded to 4 digits, members `<id>.<ext>`).

Both are written atomically (temp name + os.replace) and byte-identically for the same input:
tar members carry fixed metadata (mtime 0, uid/gid 0, mode 0644) in a fixed order.
"""

from __future__ import annotations

import io
import tarfile
from collections import defaultdict
from pathlib import Path

from kohaku_data.atomic import write_atomic

# Fixed tar member mtime: 2024-01-01T00:00:00Z (never the wall clock).
_TAR_MTIME = 1_704_067_200


def tar_name(post_id: int) -> str:
    """The danbooru2023 shard a post's file lives in: id 1234 → data-0234.tar."""
    return f"data-{post_id % 1000:04d}.tar"


def write_folder(raw_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """`files` maps a relative path (`<id>.<ext>` or `sub/dir/<id>.<ext>`) to its bytes."""
    written = []
    for rel in sorted(files):
        path = raw_dir / rel
        write_atomic(path, files[rel])
        written.append(path)
    return written


def write_tars(raw_dir: Path, files: dict[str, bytes], post_ids: dict[str, int]) -> list[Path]:
    """Group files into danbooru2023 tars by id; a nested relative path stays nested in its tar."""
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        groups[tar_name(post_ids[rel])].append(rel)
    written = []
    for name in sorted(groups):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for rel in sorted(groups[name]):
                info = tarfile.TarInfo(rel)
                info.size, info.mtime, info.mode = len(files[rel]), _TAR_MTIME, 0o644
                tar.addfile(info, io.BytesIO(files[rel]))
        path = raw_dir / name
        write_atomic(path, buf.getvalue())
        written.append(path)
    return written
