"""Cheap anime-like pictures: gradient background, a flat-coloured "character" with thick dark
outlines, thin line art, cel shading and highlights. PIL.ImageDraw plus a little numpy; a 1600 px
picture takes a few tens of milliseconds. Deterministic for a given numpy Generator state.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Color = tuple[int, int, int]

_HAIR = [(250, 220, 120), (40, 40, 60), (200, 80, 90), (120, 160, 230), (240, 240, 250),
         (150, 90, 200), (90, 60, 40), (250, 160, 200), (80, 170, 120), (230, 120, 50)]
_EYES = [(60, 120, 220), (200, 40, 60), (60, 160, 80), (150, 80, 200), (220, 160, 40), (90, 60, 40)]
_SKIN = [(255, 228, 210), (250, 215, 190), (235, 195, 160), (255, 236, 225)]
_LINE = (35, 25, 35)


def _pick(rng: np.random.Generator, palette: list[Color]) -> Color:
    return palette[int(rng.integers(len(palette)))]


def _shade(c: Color, f: float) -> Color:
    return tuple(int(max(0, min(255, v * f))) for v in c)  # type: ignore[return-value]


def gradient(width: int, height: int, top: Color, bottom: Color) -> Image.Image:
    """Vertical linear gradient (smooth shading that banding or bad resizing would show)."""
    t = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    rows = (1 - t) * np.array(top, np.float32) + t * np.array(bottom, np.float32)
    return Image.fromarray(np.broadcast_to(rows, (height, width, 3)).round().astype(np.uint8), "RGB")


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    top = tuple(int(v) for v in rng.integers(120, 256, 3))
    bottom = tuple(int(v) for v in rng.integers(40, 230, 3))
    img = gradient(w, h, top, bottom)  # type: ignore[arg-type]
    draw = ImageDraw.Draw(img)
    unit = min(w, h)
    for _ in range(int(rng.integers(3, 9))):  # flat shapes: bokeh, stars, floor tiles
        x, y = rng.random() * w, rng.random() * h
        r = unit * (0.03 + 0.12 * rng.random())
        fill = _shade(top, 1.1 + 0.2 * rng.random())  # type: ignore[arg-type]
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.regular_polygon((x, y, r), int(rng.integers(3, 7)), rotation=float(rng.random() * 90), fill=fill)
    return img


def draw_character(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """A chibi-ish figure centred in a w×h canvas, scaled to the short side."""
    s = min(w, h) * (0.75 + 0.2 * rng.random())
    cx, cy = w / 2 + (rng.random() - 0.5) * (w - s) * 0.8, h / 2 + s * 0.05
    line = max(2, int(s / 90))  # thick outline
    thin = max(1, line // 3)  # line art
    hair, eyes, skin = _pick(rng, _HAIR), _pick(rng, _EYES), _pick(rng, _SKIN)
    cloth = tuple(int(v) for v in rng.integers(30, 240, 3))
    head_r = s * 0.22
    hx, hy = cx, cy - s * 0.12
    # Body (trapezoid dress) with cel shading on one side.
    body = [(cx - s * 0.12, hy + head_r * 0.8), (cx + s * 0.12, hy + head_r * 0.8),
            (cx + s * 0.3, cy + s * 0.5), (cx - s * 0.3, cy + s * 0.5)]
    draw.polygon(body, fill=cloth, outline=_LINE, width=line)
    draw.polygon([body[1], body[2], ((body[2][0] + body[3][0]) / 2 + s * 0.1, body[2][1])],
                 fill=_shade(cloth, 0.75))  # type: ignore[arg-type]
    # Back hair, head, bangs.
    back = _shade(hair, 0.85)
    length = 1.2 + 1.2 * rng.random()  # short to long side locks
    for side in (-1, 1):
        lock = [(hx + side * head_r * 1.25, hy), (hx + side * head_r * 1.15, hy + head_r * length),
                (hx + side * head_r * 0.7, hy + head_r * (length - 0.3)), (hx + side * head_r * 0.8, hy + head_r * 0.3)]
        draw.polygon(lock, fill=back, outline=_LINE, width=line)
    draw.ellipse((hx - head_r * 1.3, hy - head_r * 1.25, hx + head_r * 1.3, hy + head_r * 1.1),
                 fill=back, outline=_LINE, width=line)
    draw.ellipse((hx - head_r, hy - head_r, hx + head_r, hy + head_r), fill=skin, outline=_LINE, width=line)
    bangs = [(hx - head_r * 1.1, hy - head_r * 0.1)]
    for k in range(6):
        x = hx - head_r + k * head_r * 0.4
        bangs += [(x, hy - head_r * (0.2 + 0.3 * rng.random())), (x + head_r * 0.2, hy - head_r * 0.9)]
    bangs += [(hx + head_r * 1.1, hy - head_r * 0.1), (hx + head_r * 0.9, hy - head_r * 1.2),
              (hx - head_r * 0.9, hy - head_r * 1.2)]
    draw.polygon(bangs, fill=hair, outline=_LINE, width=line)
    for k in range(5):  # thin strands
        x = hx - head_r * 0.8 + k * head_r * 0.4
        draw.line([(x, hy - head_r * 0.95), (x + head_r * 0.1, hy - head_r * 0.45)], fill=_shade(hair, 0.6), width=thin)
    _face(draw, rng, hx, hy, head_r, eyes, line, thin)


def _face(draw: ImageDraw.ImageDraw, rng: np.random.Generator, hx: float, hy: float, r: float,
          eyes: Color, line: int, thin: int) -> None:
    for side in (-1, 1):
        ex, ey = hx + side * r * 0.42, hy + r * 0.18
        ew, eh = r * 0.2, r * 0.3
        draw.ellipse((ex - ew, ey - eh, ex + ew, ey + eh), fill=(255, 255, 255), outline=_LINE, width=thin)
        draw.ellipse((ex - ew * 0.8, ey - eh * 0.7, ex + ew * 0.8, ey + eh), fill=eyes)
        draw.ellipse((ex - ew * 0.4, ey - eh * 0.1, ex + ew * 0.4, ey + eh * 0.6), fill=_shade(eyes, 0.4))
        draw.ellipse((ex - ew * 0.6, ey - eh * 0.6, ex - ew * 0.1, ey - eh * 0.1), fill=(255, 255, 255))
        draw.line([(ex - ew * 1.2, ey - eh * 1.1), (ex + ew * 1.2, ey - eh * 1.3)], fill=_LINE, width=line)
        draw.ellipse((ex - ew, ey + eh * 1.3, ex + ew, ey + eh * 1.7), fill=(250, 170, 180))  # blush
    smile = rng.random() < 0.7
    mouth = (hx - r * 0.12, hy + r * 0.5, hx + r * 0.12, hy + r * 0.68)
    draw.arc(mouth, 0 if smile else 180, 180 if smile else 360, fill=_LINE, width=thin + 1)


def anime_picture(rng: np.random.Generator, width: int, height: int, *, texture: bool = False) -> Image.Image:
    """An RGB picture: background, character, optional paper-grain noise (for lossy formats)."""
    img = _background(rng, width, height)
    draw_character(ImageDraw.Draw(img), rng, width, height)
    if texture:
        grain = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
        arr = np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
    return img


def character_alpha(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """RGBA: the character on a transparent background, with soft (blurred) alpha edges."""
    # Draw the same shapes on black and on white: pixels equal in both are the character.
    state = rng.bit_generator.state
    on_black = Image.new("RGB", (width, height), (0, 0, 0))
    draw_character(ImageDraw.Draw(on_black), rng, width, height)
    rng.bit_generator.state = state
    on_white = Image.new("RGB", (width, height), (255, 255, 255))
    draw_character(ImageDraw.Draw(on_white), rng, width, height)
    inside = (np.asarray(on_black) == np.asarray(on_white)).all(axis=2)
    mask = Image.fromarray(inside.astype(np.uint8) * 255, "L")
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.5, min(width, height) / 200)))
    on_black.putalpha(mask)
    return on_black
