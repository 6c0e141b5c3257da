"""Benchmark: `kdata export` of a built dataset vs a plain copy of its tar files (issue 12).

    .venv/bin/python benchmarks/bench_export.py [--quick] [--images N]

On a dataset built here from N generated images (default 1000; --quick 200), recipe `sd15-512`,
made of noise over gradients so that the stored lossless WebP files are ~0.5-0.8 MB each, the
size of real anime images in a kohaku-xl build (smooth generated drawings compress to ~70 KB,
where the cost of creating files, not of moving bytes, is all one measures), in one run:

- baseline: `shutil.copyfile` of every shard into a fresh folder (what any export must at least
  move: the image bytes are ~all of the tars);
- floors, what any exporter of that layout pays on this file system, written as bare syscalls
  (`os.open` / `os.copy_file_range` / `os.close`, ~C speed, one thread, no planning, no checks):
  `floor_images` creates one file per image from its member offsets (kohya-ft's files),
  `floor_images_txt` adds one caption file per image (kohya's), `floor_member_ranges` copies
  the image members into one file per shard keeping their offsets within a page (hf's image
  column), `empty_files` only creates as many empty files as kohya does (file creation alone),
  and `misaligned_copy` copies the tars with the source and target offsets 512 bytes apart
  within a page (tar members lie on 512-byte boundaries and a file starts at 0: the kernel's
  copy is slower when the two offsets within a page differ, so one file per image pays it);
- `kohya`, `kohya-ft`, `hf` exports into fresh folders;
- 5 rounds (--rounds), all contenders taken in turn each round, dirty pages flushed before each
  run (outside the timing); printed: each one's best wall and CPU time (user + system of this
  process: steadier on a shared machine, as a run waiting for a core gains wall time, not CPU
  time) and, per round, its ratio to the copy of the same round, the median over the rounds
  (target for the exports: <= 1.2x), and the exports' ratio to their floor;
- a rerun of the kohya export into its finished folder (resume: everything skipped) and a
  kohya-ft export hard-linking the kohya one's images (`--link-from`).

The page cache is warm for all of them (the same files are read each round). Results go to
benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import io  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks import bench_build  # noqa: E402
from benchmarks.report import write_results  # noqa: E402
from kohaku_data.assembly import build_dataset  # noqa: E402
from kohaku_data.config import Recipe  # noqa: E402
from kohaku_data.db import DanbooruDB  # noqa: E402
from kohaku_data.export import export_dataset  # noqa: E402

CACHE = ROOT / "benchmarks" / ".cache" / "export"
RECIPE = Recipe.model_validate({"name": "bx", "version": "1", "image": {"bucket": "sd15-512"},
                                "shard_max_bytes": 50_000_000})


def _noisy_png(key: int) -> tuple[bytes, str, int, int]:
    """A ~0.64 MB PNG: a colour ramp with noise (sizes like real uploads at sd15-512)."""
    rng = np.random.default_rng(key)
    w, h = int(rng.integers(520, 700)), int(rng.integers(520, 700))
    ramp = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] * rng.random(3)
    pixels = (ramp + rng.integers(0, 56, (h, w, 3))).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), "png", w, h


def make_sample(n: int) -> tuple[Path, Path]:
    return bench_build.make_sample(n, CACHE / f"in-{n}", seed=2, draw=_noisy_png)


def built_dataset(n: int) -> Path:
    out = CACHE / f"ds-{n}"
    if not (out / "dataset.lock").is_file():
        db, src = make_sample(n)
        with DanbooruDB.open(db, readonly=True) as handle:
            build_dataset(src, out, RECIPE, handle, workers=2)
    return out


def interleaved_runs(rounds: int, contenders: dict, work: Path) -> tuple[dict[str, list], dict[str, list]]:
    """Wall times and CPU times (user + system, this process's threads) of each contender over
    `rounds` rounds, taken in turn (copy, kohya, …, copy, kohya, …) so that load from the other
    users of the machine hits them alike. Before each run its target is removed and the dirty
    pages are written out (`os.sync`), outside the timing, so no run pays for the previous one's
    writeback."""
    wall: dict[str, list] = {name: [] for name in contenders}
    cpu: dict[str, list] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            shutil.rmtree(work / name, ignore_errors=True)
            os.sync()
            start, start_cpu = time.perf_counter(), _cpu()
            run(work / name)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(_cpu() - start_cpu)
    return wall, cpu


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def copy_tars(ds: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for tar in sorted(ds.glob("*.tar")):
        shutil.copyfile(tar, target / tar.name)


def misaligned_copy(ds: Path, target: Path) -> None:
    """The tars (less their first 512 bytes) copied in the kernel with source offset 512 and
    target offset 0: the same bytes as `copy_tars`, with the offsets' in-page positions apart."""
    target.mkdir(parents=True)
    for tar in sorted(ds.glob("*.tar")):
        src, dst = os.open(tar, os.O_RDONLY), os.open(target / tar.name, os.O_WRONLY | os.O_CREAT, 0o666)
        size, done = tar.stat().st_size - 512, 0
        while done < size:
            done += os.copy_file_range(src, dst, size - done, 512 + done)
        os.close(src), os.close(dst)


def member_ranges(ds: Path, parts: list, target: Path) -> None:
    """The image members of each shard copied into one file per shard, each at the same offset
    within a page as in the tar (what the hf export's image column costs at least: the bytes
    move member by member, not as one range)."""
    target.mkdir(parents=True)
    for shard, members in parts:
        src, dst = os.open(ds / shard, os.O_RDONLY), os.open(target / shard, os.O_WRONLY | os.O_CREAT, 0o666)
        position = 0
        for offset, size in members:
            position += (offset - position) % 4096
            os.lseek(dst, position, os.SEEK_SET)
            done = 0
            while done < size:
                done += os.copy_file_range(src, dst, size - done, offset + done)
            position += size
        os.close(src), os.close(dst)


def member_files(ds: Path, rows: list, target: Path, captions: bool) -> None:
    """One file per image straight from its member offsets (and a caption file per image)."""
    target.mkdir(parents=True)
    fds: dict[str, int] = {}
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for shard, key, name, offset, size, caption in rows:
        src = fds.get(shard) or fds.setdefault(shard, os.open(ds / shard, os.O_RDONLY))
        dst = os.open(target / name, flags, 0o666)
        done = 0
        while done < size:
            done += os.copy_file_range(src, dst, size - done, offset + done)
        os.close(dst)
        if captions:
            dst = os.open(target / f"{key}.txt", flags, 0o666)
            os.write(dst, caption.encode())
            os.close(dst)
    for fd in fds.values():
        os.close(fd)


def empty_files(count: int, target: Path) -> None:
    target.mkdir(parents=True)
    for i in range(count):
        os.close(os.open(target / f"{i}.webp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


FLOORS = {"kohya": "floor_images_txt", "kohya-ft": "floor_images", "hf": "floor_member_ranges"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.images or (200 if args.quick else 1000)
    ds = built_dataset(n)
    work = CACHE / "work"
    shutil.rmtree(work, ignore_errors=True)
    tar_bytes = sum(p.stat().st_size for p in ds.glob("*.tar"))
    manifest = pl.read_parquet(ds / "manifest.parquet")
    rows = list(manifest.select("shard", "key", "image", "image_offset", "image_size", "caption").iter_rows())
    parts = [(part["shard"][0], list(zip(part["image_offset"], part["image_size"])))
             for part in manifest.partition_by("shard", maintain_order=True)]
    contenders = {
        "copy": lambda target: copy_tars(ds, target),
        "misaligned_copy": lambda target: misaligned_copy(ds, target),
        "empty_files": lambda target: empty_files(2 * len(rows), target),
        "floor_images": lambda target: member_files(ds, rows, target, captions=False),
        "floor_images_txt": lambda target: member_files(ds, rows, target, captions=True),
        "floor_member_ranges": lambda target: member_ranges(ds, parts, target),
        **{fmt: lambda target, fmt=fmt: export_dataset(ds, target, fmt) for fmt in ("kohya", "kohya-ft", "hf")},
    }
    load = os.getloadavg()
    wall, cpu = interleaved_runs(args.rounds, contenders, work)
    load = [round(max(a, b), 2) for a, b in zip(load, os.getloadavg())]
    resume_s, link_s, linked = _resume_and_link(ds, work)
    shutil.rmtree(work, ignore_errors=True)
    results = {
        "images": n, "samples": len(rows), "tar_bytes": tar_bytes, "recipe": "sd15-512 / webp-fast",
        "rounds": args.rounds, "load_average": load,
        **_figures(wall, "s"), **_figures(cpu, "cpu_s"),
        "resume_noop_s": round(resume_s, 4), "link_from_s": round(link_s, 4), "linked": linked,
    }
    _print(wall, cpu, tar_bytes, len(rows), load)
    print(f"rerun (resume): {resume_s:.3f} s (nothing to do); kohya-ft --link-from kohya: {link_s:.3f} s, "
          f"{linked} images hard-linked (a finished export of the same build: trusted by size)")
    write_results("export", results)


def _paired(times: dict[str, list], name: str, base: str) -> float:
    """Median over the rounds of `name`'s time / `base`'s in the same round (steadier than a
    ratio of bests when the load drifts between rounds)."""
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def _figures(times: dict[str, list], unit: str) -> dict[str, float]:
    """Each contender's best time, and (paired, median) the ratios to the copy and of the exports to their floor."""
    key = lambda name: name.replace("-", "_")  # noqa: E731
    return {
        **{f"{key(name)}_best_{unit}": round(min(t), 4) for name, t in times.items()},
        **{f"{key(name)}_vs_copy_{unit}": round(_paired(times, name, "copy"), 3) for name in times if name != "copy"},
        **{f"{key(fmt)}_vs_floor_{unit}": round(_paired(times, fmt, floor), 3) for fmt, floor in FLOORS.items()},
    }


def _resume_and_link(ds: Path, work: Path) -> tuple[float, float, int]:
    """A rerun of the finished kohya export (everything skipped), then a kohya-ft export that
    hard-links its images."""
    export_dataset(ds, work / "kohya", "kohya")
    start = time.perf_counter()
    export_dataset(ds, work / "kohya", "kohya")
    resume_s = time.perf_counter() - start
    start = time.perf_counter()
    linked = export_dataset(ds, work / "linked", "kohya-ft", link_from=work / "kohya")
    return resume_s, time.perf_counter() - start, linked.linked


NOTES = {
    "copy": "baseline: shutil.copyfile of the tars",
    "misaligned_copy": "the same bytes, source and target 512 bytes apart within a page",
    "empty_files": "as many empty files as kohya creates",
    "floor_images": "one file per image from the member offsets (kohya-ft's files)",
    "floor_images_txt": "the same plus one caption file per image (kohya's)",
    "floor_member_ranges": "the image members into one file per shard, page offsets kept (hf's bytes)",
}


def _print(wall: dict[str, list], cpu: dict[str, list], tar_bytes: int, samples: int, load: list) -> None:
    print(f"{samples} samples, {tar_bytes / 1e6:.0f} MB of tars; load average (1/5/15 min, worst of "
          f"before/after): {load}; ratios: median over the rounds of the same-round ratio")
    print(f"{'':20} {'best s':>7} {'x copy':>7} {'cpu s':>7} {'x copy':>7}")
    for name in wall:
        floor = f"x{_paired(wall, name, FLOORS[name]):.2f} wall / x{_paired(cpu, name, FLOORS[name]):.2f} cpu " \
                f"vs {FLOORS[name]}" if name in FLOORS else NOTES[name]
        ratio = (f"{_paired(wall, name, 'copy'):7.2f}", f"{_paired(cpu, name, 'copy'):7.2f}") if name != "copy" \
            else (f"{'1':>7}", f"{'1':>7}")
        print(f"{name:20} {min(wall[name]):7.3f} {ratio[0]} {min(cpu[name]):7.3f} {ratio[1]}  {floor}")
    print("target: each export <= 1.2 x the copy")


if __name__ == "__main__":
    main()
