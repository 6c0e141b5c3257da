"""A real 2-process torch.distributed (gloo, 127.0.0.1) run over BucketBatchSampler.

Each rank builds its plan alone and does one all_reduce per step. If the ranks had different
step counts the collectives would stall: the process group's timeout and the join timeout
below turn that into a failure instead of a hung suite. Per step the ranks also compare their
bucket (min == max over ranks) and, at the end, their plan digests.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from test_train_support import built_dataset

WORLD = 2
TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, ds_path: str, results) -> None:
    import torch.distributed as dist

    from kohaku_data.train import BucketBatchSampler, KdataDataset, KdataLoader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=TIMEOUT_S))
    try:
        ds = KdataDataset(ds_path, decode="torch")
        sampler = BucketBatchSampler(ds, 2, world_size=WORLD, rank=rank, seed=11, remainder="carry")
        loader = KdataLoader(ds, sampler)
        names = sampler.layout.names
        steps, keys, desync = 0, [], 0
        for epoch in range(2):
            loader.set_epoch(epoch)
            for batch in loader:
                h, w = batch["target_size"][0].tolist()
                code = torch.tensor([names.index(f"{w}x{h}")], dtype=torch.int64)
                lo, hi = code.clone(), code.clone()
                dist.all_reduce(lo, op=dist.ReduceOp.MIN)
                dist.all_reduce(hi, op=dist.ReduceOp.MAX)
                total = batch["image"].float().mean().reshape(1)
                dist.all_reduce(total)  # the "gradient" all_reduce of a training step
                desync += int(lo.item() != hi.item())
                keys.append(batch["key"].tolist())
                steps += 1
        digests = [None] * WORLD
        dist.all_gather_object(digests, sampler.plan(1).digest())
        results.put((rank, {"steps": steps, "desync": desync, "keys": keys, "digests": digests}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory) -> Path:
    return built_dataset(tmp_path_factory.mktemp("train_dist"))


def test_two_gloo_ranks_step_together_without_hanging(ds_path):
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(ds_path), results)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        out = dict(results.get(timeout=TIMEOUT_S * 2) for _ in range(WORLD))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = out[0], out[1]
    assert a["steps"] == b["steps"] > 0 and a["desync"] == b["desync"] == 0
    assert a["digests"][0] == a["digests"][1] == b["digests"][0]
    # step by step, rank 0's slice then rank 1's is the global batch a 1-process run plans
    from kohaku_data.train import BucketBatchSampler, KdataDataset

    ds = KdataDataset(ds_path, decode="bytes")
    single = BucketBatchSampler(ds, 2 * WORLD, seed=11, remainder="carry")
    key = ds.manifest["key"].to_numpy()
    planned = [key[row].tolist() for epoch in range(2) for row in single.plan(epoch).batches]
    assert [x + y for x, y in zip(a["keys"], b["keys"])] == planned
