"""Benchmark: `kdata build` scaled out — local pool vs a Ray cluster, same images, same run (issue 11).

    .venv/bin/python benchmarks/bench_scale_out.py [--quick] [--images N]
    make bench ONLY=scale-out

On the sample of benchmarks/bench_build.py (N generated drawings, default 400; --quick 150;
demo-256 buckets, webp-fast), each build from scratch into a fresh folder, best of 2 rounds
(--quick: 1):

- local executor, 1 worker (runs in the driver's own process) and 2 worker processes;
- Ray on an in-process loopback cluster (`ray.cluster_utils.Cluster`): 1 node x 1 CPU, then a
  second node x 1 CPU added (worker processes warmed up before timing on both);
- every output is checked byte-identical to the local 1-worker build (sha256 of every file);
- driver CPU per image: CPU seconds of this process (the driver: plan, captions, layout, parts,
  Ray's own driver threads) during the 2-node build, less those of a build of N/4 images (the
  fixed costs: plan, thresholds, version probe), per further image; measured at this small
  plan's task size and again at 64 images per task (what plans of 16k+ posts get; used for the
  projection). One driver feeds at most
  1 / that images/s, i.e. `per-image core seconds of the recipe / driver CPU per image` cores;
- the kohaku-xl recipe's per-image cost (kohaku-xl buckets, webp-small) measured here on a few
  ~5 MP drawings, and from it the projection for 6M images on N machines of C cores, with the
  driver's limit and the measured 2-node efficiency.

On a 2-core machine shared with other work these figures are noisy (2 Ray nodes x 1 CPU use
both cores, with the driver and Ray's daemons competing): read the ratios, measured in the same
run, not the absolute rates. Results go to benchmarks/results/scale-out.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (before importing ray)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_build import RECIPE, drawing, make_sample  # noqa: E402
from benchmarks.report import write_results  # noqa: E402
from kohaku_data.assembly import build_dataset  # noqa: E402
from kohaku_data.assembly.executor import LocalExecutor  # noqa: E402
from kohaku_data.config import ImageConfig  # noqa: E402
from kohaku_data.db import DanbooruDB  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "scale-out"
KOHAKU_XL = ImageConfig(bucket="kohaku-xl", codec="webp-small")
PROJECT_IMAGES = 6_000_000
CLUSTERS = ((1, 32), (4, 32), (8, 32), (16, 32), (8, 64), (32, 64))


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".build.lock"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_build(db_path: Path, src: Path, out: Path, make_executor, rounds: int) -> tuple[float, float, int, dict]:
    """(images/s, driver CPU s, images, digest) of the fastest of `rounds` builds from scratch
    (the best round is the one the other tenants of a shared machine disturbed least)."""
    best = None
    for _ in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        cpu, start = cpu_seconds(), time.perf_counter()
        with DanbooruDB.open(db_path, readonly=True) as db:
            result = build_dataset(src, out, RECIPE, db, executor=make_executor())
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        if best is None or wall < best[0]:
            best = (wall, cpu, result.processed)
    wall, cpu, images = best
    return images / wall, cpu, images, folder_digest(out)


@contextlib.contextmanager
def _task_size(items: int):
    """Image tasks of `items` each for the block (the plan-derived size is ~2 at this bench's size)."""
    from kohaku_data.assembly import pipeline

    saved = pipeline.task_size
    pipeline.task_size = lambda _n: items
    try:
        yield
    finally:
        pipeline.task_size = saved


def _warm(ray, nodes: int) -> None:
    """Start one worker process per node before timing (a long build pays this once)."""
    @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
    def ping() -> str:
        import kohaku_data.assembly.tasks  # noqa: F401  (what a real task imports)

        time.sleep(0.3)
        return ray.get_runtime_context().get_node_id()

    for _ in range(10):
        if len(set(ray.get([ping.remote() for _ in range(2 * nodes)]))) == nodes:
            return


def ray_rates(db_path: Path, src: Path, out: Path, small: tuple[Path, Path], rounds: int) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from kohaku_data.assembly.ray_executor import RayExecutor

    node = {"num_cpus": 1, "object_store_memory": 80 << 20, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        _warm(ray, 1)
        one = timed_build(db_path, src, out, RayExecutor, rounds)
        one_small = timed_build(*small, out, RayExecutor, rounds)
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        _warm(ray, 2)
        used: list[RayExecutor] = []
        two = timed_build(db_path, src, out, lambda: used.append(RayExecutor()) or used[-1], rounds)
        # The driver's fixed costs (plan, thresholds, the version probe) from a build of N/4 posts:
        # the difference is what each further image costs the driver.
        small_run = timed_build(*small, out, RayExecutor, rounds)
        # The same at 64 images per task, what every plan of >= 16k posts gets (the output is the
        # same for any task size: checked too).
        with _task_size(64):
            big_tasks = timed_build(db_path, src, out, RayExecutor, rounds)
            small_big_tasks = timed_build(*small, out, RayExecutor, rounds)
        nodes = max(len(e.placements) for e in used)
        return {"one": one, "one_small": one_small, "two": two, "small": small_run, "nodes_used": nodes,
                "two_64": big_tasks, "small_64": small_big_tasks}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _big_drawing(seed: int) -> bytes:
    """A ~5 MP flat-colour drawing with lines, as PNG (what the kohaku-xl recipe meets)."""
    return drawing(seed, width=(2300, 2700), height=(1900, 2200), shapes=40, line=6, ext="png")[0]


def kohaku_xl_seconds(count: int) -> float:
    """Core seconds per ~5 MP image at the kohaku-xl recipe (decode → resize → webp-small → verify)."""
    from kohaku_data.images import process_image

    images = [_big_drawing(seed) for seed in range(count)]
    start = time.process_time()
    for data in images:
        process_image(data, KOHAKU_XL, name="bench.png")
    return (time.process_time() - start) / count


def marginal(images: int, rate: float, small_images: int, small_rate: float) -> float:
    return (images - small_images) / max(1e-9, images / rate - small_images / small_rate)


def projection(per_image_s: float, driver_s: float, efficiency: float) -> list[dict]:
    """Hours for PROJECT_IMAGES on N x C cores: the cores' bound, the driver's, the larger wins."""
    rows = []
    for machines, cores in CLUSTERS:
        workers_h = PROJECT_IMAGES * per_image_s / (machines * cores * efficiency) / 3600
        driver_h = PROJECT_IMAGES * driver_s / 3600
        rows.append({"machines": machines, "cores": cores, "hours_cores_bound": round(workers_h, 2),
                     "hours_driver_bound": round(driver_h, 2), "hours": round(max(workers_h, driver_h), 2),
                     "bound": "driver" if driver_h > workers_h else "cores"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None)
    args = parser.parse_args()
    n = args.images or (150 if args.quick else 400)
    rounds = 1 if args.quick else 2
    db, src = make_sample(n)
    small = make_sample(n // 4)
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / "out"
    l1, l1_cpu, images, reference = timed_build(db, src, out, lambda: LocalExecutor(1), rounds)
    l2, _, _, l2_digest = timed_build(db, src, out, lambda: LocalExecutor(2), rounds)
    l1_small = timed_build(*small, out, lambda: LocalExecutor(1), rounds)
    l2_small = timed_build(*small, out, lambda: LocalExecutor(2), rounds)
    ray_runs = ray_rates(db, src, out, small, rounds)
    (r1, _, _, r1_digest), (r2, r2_cpu, _, r2_digest) = ray_runs["one"], ray_runs["two"]
    _, small_cpu, small_images, _ = ray_runs["small"]
    r64, r64_cpu, _, r64_digest = ray_runs["two_64"]
    # Marginal rates: the images past the N/4 build over the seconds past it. A build's fixed
    # costs (plan, thresholds, dataset card, pool / cluster start) cancel out: this is the rate
    # at which a long build goes, and what scales with workers and nodes.
    m = {name: marginal(images, big[0], small_images, sm[0]) for name, big, sm in (
        ("l1", (l1,), l1_small), ("l2", (l2,), l2_small), ("r1", (r1,), ray_runs["one_small"]),
        ("r2", (r2,), ray_runs["small"]))}
    _, small64_cpu, _, _ = ray_runs["small_64"]
    shutil.rmtree(out, ignore_errors=True)
    identical = all(d == reference for d in (l2_digest, r1_digest, r2_digest, r64_digest))
    small_tasks_per_image = max(1e-6, (r2_cpu - small_cpu) / (images - small_images))
    driver_per_image = max(1e-6, (r64_cpu - small64_cpu) / (images - small_images))
    xl = kohaku_xl_seconds(2 if args.quick else 4)
    efficiency = min(1.0, (m["r2"] / m["r1"]) / 2)
    feeds_cores = xl / driver_per_image
    results = {
        "images": images, "recipe": "demo-256 / webp-fast (timed builds); kohaku-xl / webp-small (projection)",
        "local_w1_images_per_s": round(l1, 2), "local_w2_images_per_s": round(l2, 2),
        "ray_1x1_images_per_s": round(r1, 2), "ray_2x1_images_per_s": round(r2, 2),
        "ray_nodes_used": ray_runs["nodes_used"],
        "scaling_ray_2_vs_1_node": round(r2 / r1, 3), "scaling_local_w2_vs_w1": round(l2 / l1, 3),
        "ray_2cpu_vs_local_2cpu": round(r2 / l2, 3), "byte_identical": identical,
        "marginal_images_per_s": {k: round(v, 2) for k, v in m.items()},
        "marginal_scaling_ray_2_vs_1_node": round(m["r2"] / m["r1"], 3),
        "marginal_scaling_local_w2_vs_w1": round(m["l2"] / m["l1"], 3),
        "marginal_ray_2cpu_vs_local_2cpu": round(m["r2"] / m["l2"], 3),
        "driver_cpu_ms_per_image_ray": round(1000 * driver_per_image, 3),
        "driver_cpu_ms_per_image_ray_small_tasks": round(1000 * small_tasks_per_image, 3),
        "ray_2x1_images_per_s_64_per_task": round(r64, 2),
        "driver_cpu_s_total_ray_2x1": round(r2_cpu, 3), "rounds_best_of": rounds,
        "driver_cpu_ms_per_image_local_w1_total": round(1000 * l1_cpu / images, 3),
        "kohaku_xl_core_s_per_image": round(xl, 3),
        "one_driver_feeds_cores": int(feeds_cores), "one_driver_feeds_32_core_machines": round(feeds_cores / 32, 1),
        "projection_6M": projection(xl, driver_per_image, efficiency),
        "note": "2-core machine shared with other work: absolute rates are noisy; ratios are from one run",
    }
    print(f"local, 1 worker     : {l1:7.1f} images/s  (baseline)")
    print(f"local, 2 workers    : {l2:7.1f} images/s  x{l2 / l1:.2f} vs 1 worker")
    print(f"ray, 1 node x 1 CPU : {r1:7.1f} images/s  x{r1 / l1:.2f} vs local 1 worker")
    print(f"ray, 2 nodes x 1 CPU: {r2:7.1f} images/s  x{r2 / r1:.2f} vs 1 node (target >= 1.8); "
          f"x{r2 / l2:.2f} vs local 2 workers (target within 10%); tasks on {ray_runs['nodes_used']} nodes")
    print(f"marginal rates (past the {small_images}-image build: fixed costs such as the card cancel out): "
          f"local w1 {m['l1']:.1f}, w2 {m['l2']:.1f} (x{m['l2'] / m['l1']:.2f}); ray 1 node {m['r1']:.1f}, "
          f"2 nodes {m['r2']:.1f} (x{m['r2'] / m['r1']:.2f} vs 1 node, target >= 1.8; "
          f"x{m['r2'] / m['l2']:.2f} vs local w2, target within 10%)")
    print(f"outputs byte-identical across all runs (and at 64 images per task): {identical}")
    print(f"driver CPU per image (ray, 2 nodes; marginal over a {small_images}-image build): "
          f"{1000 * small_tasks_per_image:.2f} ms at this plan's task size ({-(-n // 256)} per task), "
          f"{1000 * driver_per_image:.2f} ms at 64 per task (big plans; {r64:.1f} images/s) -> one driver feeds "
          f"~{feeds_cores:,.0f} cores at kohaku-xl ({xl:.2f} core-s per ~5 MP image), "
          f"~{feeds_cores / 32:,.0f} machines of 32 cores")
    print(f"projection, {PROJECT_IMAGES / 1e6:.0f}M images at kohaku-xl (2-node efficiency {efficiency:.2f}):")
    for row in results["projection_6M"]:
        print(f"  {row['machines']:>3} x {row['cores']:>2} cores: {row['hours']:8.1f} h "
              f"(cores {row['hours_cores_bound']:.1f} h, driver {row['hours_driver_bound']:.1f} h: {row['bound']}-bound)")
    print("(2-core machine shared with other work: figures are noisy; compare the ratios of this run)")
    write_results("scale-out", results)


if __name__ == "__main__":
    main()
