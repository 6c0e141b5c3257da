"""Latents of a built dataset (`kdata latents DATASET --vae PATH`): docs/latents.md.

Sits above assembly (its executors, shard writer, parquet settings) and below export (the
kohya export writes sd-scripts' latent caches from a latent set). torch, diffusers and
safetensors come with the `latents` extra and are imported only inside the functions that run
the VAE.
"""

from kohaku_data.latents.build import LatentError, LatentResult, make_latents, resolve_device
from kohaku_data.latents.tasks import LatentSpec
from kohaku_data.latents.vae import SDXL_VAE_CONFIG, VaeError, vae_sha256

__all__ = ["LatentError", "LatentResult", "LatentSpec", "SDXL_VAE_CONFIG", "VaeError", "make_latents",
           "resolve_device", "vae_sha256"]
