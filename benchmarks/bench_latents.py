"""Latents/s of `kdata latents`' encode on this machine's CPU: the SDXL VAE architecture (random
weights: speed does not depend on them) at a small size and at 1 MP, 1 torch thread and all.

    .venv/bin/python benchmarks/bench_latents.py [--big 1024] [--small 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import time

import torch


def rate(vae, side: int, batch: int, threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    pixels = torch.rand(batch, 3, side, side) * 2 - 1
    with torch.inference_mode():
        vae.encode(pixels[:1]).latent_dist.mean  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            vae.encode(pixels).latent_dist.mean
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    from diffusers import AutoencoderKL

    from kohaku_data.latents import SDXL_VAE_CONFIG

    parser = argparse.ArgumentParser()
    parser.add_argument("--big", type=int, default=1024)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="make bench QUICK=1: a 256 px image instead of 1024")
    args = parser.parse_args()
    if args.quick:
        args.big = min(args.big, 256)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SDXL_VAE_CONFIG).eval()
    for threads in sorted({1, torch.get_num_threads()}):
        print(f"{args.small}x{args.small}, batch {args.batch}, {threads} thread(s): "
              f"{rate(vae, args.small, args.batch, threads, 3):.2f} latents/s")
    print(f"{args.big}x{args.big}, batch 1, {torch.get_num_threads()} thread(s): "
          f"{rate(vae, args.big, 1, torch.get_num_threads(), 1):.3f} latents/s")


if __name__ == "__main__":
    main()
