"""A built dataset's small files on this disk, wherever the dataset lies (a folder or a URL).

The readers kdata has for them (`latent_facts`, polars' parquet reader) take
local paths. For a dataset on object storage `local_view` downloads just the files asked for
(its manifest, a latent set's lock, index and manifest, the card) into a temporary folder laid
out as the dataset is; a local dataset is its own view. The driver reads the dataset manifest's
columns it needs by range instead (`storage.read_parquet`: a manifest is mostly captions).
Shards never pass through here: latent tasks read images by byte range, verify streams one
latent shard at a time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kohaku_data import storage
from kohaku_data.assembly.card_data import latent_record_names
from kohaku_data.assembly.manifest import MANIFEST_NAME


@contextlib.contextmanager
def local_view(dataset: storage.Target, names: list[str]) -> Iterator[Path]:
    """A local folder holding the dataset-relative `names` of `dataset` (those that exist): the
    dataset itself when it is local, else a temporary copy of just those files."""
    local = storage.local_path(dataset)
    if local is not None:
        yield local
        return
    targets: list[storage.Target] = [storage.join(dataset, name) for name in names]
    with storage.fetched(targets) as copies, tempfile.TemporaryDirectory(prefix=".kdata-view-") as tmp:
        for name, copy in zip(names, copies):
            if copy is not None:  # fetched keeps one name a file: move each to its place in the layout
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(copy, Path(tmp) / name)
        yield Path(tmp)


def latent_view(dataset: storage.Target, *extra: str) -> contextlib.AbstractContextManager[Path]:
    """`local_view` of the dataset's manifest, every latent set's small files (one listing of
    `latents/` finds them) and `extra` names."""
    found = [] if storage.local_path(dataset) is not None else latent_record_names(dataset)
    return local_view(dataset, [MANIFEST_NAME, *found, *extra])
