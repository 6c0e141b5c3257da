"""Dataset assembly: a recipe + a DB + raw files → deterministic webdataset shards and manifests.

    from kohaku_data.assembly import build_dataset
    result = build_dataset(Path("raw"), Path("datasets/demo-1"), recipe, db, workers=4)

The modules, in the order a post travels through them: `plan` (posts ∩ files, sorted by id,
columnar) → `tasks` (image work, staged content-addressed) → `executor` / `ray_executor` (where
tasks run: a local pool or Ray) → `pipeline` (the driver loop) and `packing` (shard layout from
result sizes; shard tasks write the tars) → `shards` / `sample_schema` / `manifest` / `card` /
`lock` (what is written; the lock last) → `builder` (resume, up-to-date checks, final files).
Around a built dataset: `verify` (re-hash it), `recaption` (new captions, same images) and `diff`
(what changed between two).
"""

from kohaku_data.assembly.builder import BuildResult, build_dataset
from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.assembly.lock import BuildError

__all__ = ["BuildError", "BuildResult", "Executor", "LocalExecutor", "build_dataset"]
