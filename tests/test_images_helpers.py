"""Real image files for the image-stage tests, made with Pillow/numpy (no fixtures on disk)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge size (no pixel data needed to be a bomb)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def linear_rgb_icc() -> bytes:
    """A minimal ICC v2 RGB matrix/TRC profile: sRGB primaries, gamma 1.0 ("linear RGB")."""
    def s15(v: float) -> bytes:
        return struct.pack(">i", round(v * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = b"Linear RGB test\0"
    desc = b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 1) + struct.pack(">H", 256) + b"\0\0"
    tags = [
        (b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
        (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
        (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += b"\0" * (-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (
        struct.pack(">I", size) + b"\0" * 4 + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
        + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0)
        + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def lanczos3_reference(a: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Separable Lanczos-3 in float64 (the textbook filter, edge-renormalised like Pillow)."""
    def weights(n_in: int, n_out: int, lo: float, hi: float) -> np.ndarray:
        scale = (hi - lo) / n_out
        support = 3.0 * max(scale, 1.0)
        centres = lo + (np.arange(n_out) + 0.5) * scale
        src = np.arange(n_in) + 0.5
        x = (src[None, :] - centres[:, None]) / max(scale, 1.0)
        w = np.sinc(x) * np.sinc(x / 3.0)
        w[np.abs(src[None, :] - centres[:, None]) >= support] = 0.0
        return w / w.sum(axis=1, keepdims=True)

    wx = weights(a.shape[1], size[0], box[0], box[2])
    wy = weights(a.shape[0], size[1], box[1], box[3])
    a = a.astype(np.float64)
    if a.ndim == 2:
        return wy @ a @ wx.T
    return np.stack([wy @ a[..., c] @ wx.T for c in range(a.shape[2])], axis=-1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
