"""Dataset assembly: a recipe + a DB + raw files → deterministic webdataset shards and manifests.

    from kohaku_data.assembly import build_dataset
    result = build_dataset(Path("raw"), Path("datasets/demo-1"), recipe, db, workers=4)

The modules, in the order a post travels through them: `plan` (posts ∩ files, sorted by id) →
`tasks` (image work, staged content-addressed) → `executor` (where tasks run) → `builder` (the
orchestration: resume, packing, final files) → `shards` / `manifest` / `lock` (what is written) →
`verify` (re-hash a built dataset) and `recaption` (new captions, same images).
"""

from kohaku_data.assembly.builder import BuildResult, build_dataset
from kohaku_data.assembly.executor import Executor, LocalExecutor
from kohaku_data.assembly.lock import BuildError

__all__ = ["BuildError", "BuildResult", "Executor", "LocalExecutor", "build_dataset"]
