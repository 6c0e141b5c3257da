"""The VAE of `kdata latents`: a local diffusers AutoencoderKL folder or one `.safetensors` file.

Nothing is downloaded: a folder is read with `local_files_only`, a single file is built from a
config (the SDXL VAE's below, or `--vae-config config.json` for 16-channel VAEs such as Flux's
or SD3's) and its weights loaded into it (diffusers' key names, or the original LDM names, which
diffusers' own converter maps). `vae_sha256` is what the lock records: the file's sha256, or for
a folder the sha256 of its files' (relative path, sha256) list.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from kohaku_data.assembly.shards import file_sha256
from kohaku_data.errors import KdataError

# diffusers' config of the SDXL VAE (stabilityai/sdxl-vae config.json, minus the bookkeeping keys).
SDXL_VAE_CONFIG: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True,
}


class VaeError(KdataError):
    """The VAE path or its config cannot be used."""


def vae_sha256(path: Path) -> str:
    """sha256 of the file, or of a folder's sorted (relative path, file sha256) list."""
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise VaeError(f"the VAE {path} does not exist: give a diffusers AutoencoderKL folder or a .safetensors file.")
    listing = [[str(p.relative_to(path)), file_sha256(p)] for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def vae_config(path: Path, config_path: Path | None = None) -> dict[str, Any]:
    """The AutoencoderKL config of a folder (its config.json) or of a single file."""
    source = config_path or (path / "config.json" if path.is_dir() else None)
    if source is None:
        return dict(SDXL_VAE_CONFIG)
    try:
        config = json.loads(source.read_text())
    except (OSError, ValueError) as exc:
        raise VaeError(f"the VAE config {source} is unreadable ({exc}): give a diffusers config.json.") from None
    return {k: v for k, v in config.items() if not k.startswith("_")}


@functools.lru_cache(maxsize=1)  # one VAE per worker process: a task per shard reuses it
def load_vae(path: str, sha256: str, config_path: str | None, device: str) -> Any:
    """The AutoencoderKL in eval mode, fp32, on `device`; `sha256` (checked) keys the cache."""
    import torch
    from diffusers import AutoencoderKL

    where = Path(path)
    if vae_sha256(where) != sha256:
        raise VaeError(f"the VAE {path} changed while latents were being made; run the command again.")
    config = vae_config(where, Path(config_path) if config_path else None)
    if where.is_dir() and config_path is None:
        # diffusers' faster loading needs accelerate; said outright, it does not warn without it
        lean = importlib.util.find_spec("accelerate") is not None
        vae = AutoencoderKL.from_pretrained(where, local_files_only=True, torch_dtype=torch.float32,
                                            low_cpu_mem_usage=lean)
    else:
        vae = AutoencoderKL(**config)
        vae.load_state_dict(_state_dict(where, vae))
    return vae.to(device=device).eval().requires_grad_(False)  # fp32: from_pretrained(torch_dtype) or built so


def _state_dict(path: Path, vae: Any) -> dict[str, Any]:
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise VaeError(f"the VAE {path} is not a .safetensors file: give one, or a diffusers AutoencoderKL folder.")
    weights = load_file(str(path))
    expected = set(vae.state_dict())
    if expected <= set(weights):
        return {k: weights[k] for k in expected}
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    converted = convert_ldm_vae_checkpoint(weights, dict(vae.config))
    missing = sorted(expected - set(converted))
    if missing:
        raise VaeError(f"the VAE {path} lacks {len(missing)} weights of this config (e.g. {missing[0]}): "
                       "give --vae-config with the config it was trained with.")
    return {k: converted[k] for k in expected}
