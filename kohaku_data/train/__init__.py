"""Read a kdata build in a PyTorch training loop (extra: `pip install '.[torch]'` from a checkout).

    from kohaku_data.train import KdataDataset, BucketBatchSampler, KdataLoader

    ds = KdataDataset("datasets/kohaku-xl-gamma-1", decode="torch")
    sampler = BucketBatchSampler(ds, batch_size=4, world_size=world, rank=rank, seed=0)
    loader = KdataLoader(ds, sampler, num_workers=4)
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for batch in loader:  # batch["image"]: (4, 3, H, W) uint8, one bucket; batch["time_ids"]
            ...
            checkpoint["data"] = loader.state_dict()  # resume: loader.load_state_dict(...)

Several builds: `KdataMix([(ds_a, 3.0), (ds_b, 1.0)], batch_size=4, ...)` and
`KdataCurriculum([(0, mix_a), (10_000, mix_b)])` (mix.py); `KdataLoader(mix)` takes their sampler.

Importing this package loads neither the build machinery nor torch; torch is needed only for
decode="torch", the collate and the loader.
"""

from kohaku_data.train.collate import BucketCollate
from kohaku_data.train.dataset import KdataDataset, split_caption
from kohaku_data.train.errors import ReaderError, SamplerError
from kohaku_data.train.loader import KdataLoader
from kohaku_data.train.mix import KdataCurriculum, KdataMix
from kohaku_data.train.plan import EpochPlan, EpochReport, Layout, plan_epoch
from kohaku_data.train.sampler import BucketBatchSampler, PadIndex
from kohaku_data.train.shard_cache import Prefetcher, ShardCache

__all__ = [
    "BucketBatchSampler", "BucketCollate", "EpochPlan", "EpochReport", "KdataCurriculum", "KdataDataset",
    "KdataLoader", "KdataMix",
    "Layout", "PadIndex", "Prefetcher", "ReaderError", "SamplerError", "ShardCache", "plan_epoch", "split_caption",
]
