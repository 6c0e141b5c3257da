"""A small AutoencoderKL of the SDXL family for the latent tests: byte-level behaviour (workers,
executors, resume) needs a VAE, not a big one. Random weights, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

from kohaku_data.latents import SDXL_VAE_CONFIG

TINY_VAE = {**SDXL_VAE_CONFIG, "block_out_channels": [8, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
            "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 4}


def save_tiny_vae(folder: Path, seed: int = 1) -> Path:
    """The tiny VAE with weights drawn from `seed`, as a diffusers folder."""
    import diffusers
    import torch

    torch.manual_seed(seed)
    diffusers.AutoencoderKL(**TINY_VAE).save_pretrained(folder)
    return folder
