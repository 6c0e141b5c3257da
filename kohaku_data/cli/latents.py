"""`kdata latents DATASET --vae PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from kohaku_data.cli.common import WorkersOption, clean_errors, is_tty


def latents(
    dataset: Annotated[str, typer.Argument(help="A dataset made by `kdata build`: a folder or a URL (s3://bucket/datasets/x).")],
    vae: Annotated[Path, typer.Option("--vae", help="A diffusers AutoencoderKL folder, or one .safetensors file (SDXL VAE unless --vae-config).")],
    level: Annotated[str | None, typer.Option("--level", help="An `[image] levels` level of the build, or all (the main images and every level); default: the main images. A level's set goes to DATASET/latents/LEVEL/.")] = None,
    vae_config: Annotated[Path | None, typer.Option("--vae-config", help="config.json for a single-file VAE other than SDXL's (e.g. Flux's, SD3's: 16 channels).")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="fp16 or bf16 (computed in fp32, then cast).")] = "fp16",
    std: Annotated[bool, typer.Option("--std", help="Store the latent distribution's std beside its mean.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto (cuda when the workers have GPUs), cpu or cuda; recorded in latents.lock.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per VAE call, one bucket a batch (part of the bytes).")] = 4,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads per task (part of the bytes on CPU).")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="local or ray.")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster (with --executor ray).")] = None,
    workers: WorkersOption = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
) -> None:
    """Encode every stored image with a local VAE into latent shards in DATASET/latents/ (resumable).

    DATASET may lie on object storage (s3://…): the latents are written there, the same bytes as
    on a disk. With --level, that level's images into DATASET/latents/LEVEL/ (--level all: every
    set). The dataset card (README.md) then lists the dataset's latent sets."""
    from kohaku_data import storage

    with clean_errors(kept="The latent shards already written are kept",
                      target=storage.display(storage.join(dataset, "latents"))):
        from kohaku_data.assembly.executors import make_executor
        from kohaku_data.assembly.manifest import dataset_levels
        from kohaku_data.errors import KdataError
        from kohaku_data.latents import LatentSpec, make_latents, resolve_device, vae_sha256
        from kohaku_data.latents.card import refresh_card

        if dtype not in ("fp16", "bf16") or device not in ("auto", "cpu", "cuda"):
            raise KdataError(f"--dtype {dtype} / --device {device}: use --dtype fp16|bf16 and --device auto|cpu|cuda.")
        run = make_executor(_kind(executor), workers=workers or 1, ray_address=ray_address)
        kind = resolve_device(device, run)
        if kind == "cuda" and executor == "ray":
            run.num_gpus = 1.0  # every latent task asks Ray for a GPU
        spec = LatentSpec(str(vae.resolve()), vae_sha256(vae), str(vae_config.resolve()) if vae_config else None,
                          dtype, std, kind, batch_size, threads)
        levels = [None, *dataset_levels(dataset)] if level == "all" else [level]
        for one in levels:
            result = make_latents(dataset, spec, run, level=one, progress=is_tty() and not no_progress)
            typer.echo(f"{result.folder}: {result.samples} latents in {result.shards} shards on "
                       f"{', '.join(result.devices)} ({result.encoded} encoded, {result.reused} reused, "
                       f"{result.kept_shards} shards kept)")
        refresh_card(dataset)


def _kind(name: str) -> Literal["local", "ray"]:
    from kohaku_data.errors import KdataError

    if name not in ("local", "ray"):
        raise KdataError(f"--executor {name}: use local or ray.")
    return "ray" if name == "ray" else "local"
