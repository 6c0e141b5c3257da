"""process_image on real files of every mode and every hard case; quality of the one resize."""

from __future__ import annotations

import functools
import io
import pickle

import numpy as np
import pytest
from PIL import Image, ImageDraw

from test_images_helpers import bomb_png, decode, encode, lanczos3_reference, linear_rgb_icc, psnr
from kohaku_data.config import ImageConfig
from kohaku_data.images import REJECT_REASONS, bucket_resolutions, choose_bucket, process_image
from kohaku_data.images.encode import verify
from kohaku_data.images.errors import Rejected
from kohaku_data.images.resize import plan_cover

DEMO = ImageConfig(bucket="demo-256")
SIZE = (300, 400)
BUCKET = choose_bucket(SIZE, bucket_resolutions(DEMO.bucket_preset()))


def gradient_rgb(size=SIZE) -> Image.Image:
    w, h = size
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    a = np.dstack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256]).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def check_ok(r, mode: str | None = None):
    assert r.status == "ok", (r.reason, r.detail)
    assert r.reason is None and r.data
    back = decode(r.data)
    assert back.size == (r.width, r.height) == r.bucket
    assert back.mode == r.mode in ("RGB", "RGBA")
    if mode:
        assert r.mode == mode
    return back


# -- every input mode ------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def mode_cases() -> dict[str, tuple[bytes, str]]:
    rgb = gradient_rgb()
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(SIZE))
    pal_t = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal_t.info["transparency"] = 0
    i16 = Image.fromarray((np.arange(400)[:, None] * 160 + np.zeros((1, 300))).astype(np.uint16))
    return {
        "1": (encode(rgb.convert("1"), "PNG"), "RGB"),
        "L": (encode(rgb.convert("L"), "PNG"), "RGB"),
        "LA": (encode(rgba.convert("LA"), "PNG"), "RGBA"),
        "P": (encode(rgb.convert("P"), "PNG"), "RGB"),
        "P+tRNS": (encode(pal_t, "PNG"), "RGBA"),
        "RGB-jpeg": (encode(rgb, "JPEG", quality=95), "RGB"),
        "RGBA-png": (encode(rgba, "PNG"), "RGBA"),
        "RGBA-webp": (encode(rgba, "WEBP", lossless=True), "RGBA"),
        "RGB-webp-lossy": (encode(rgb, "WEBP", quality=80), "RGB"),
        "CMYK-jpeg": (encode(rgb.convert("CMYK"), "JPEG", quality=95), "RGB"),
        "I;16-png": (encode(i16, "PNG"), "RGB"),
        "I-tiff": (encode(i16.convert("I"), "TIFF"), "RGB"),
        "F-tiff": (encode(Image.fromarray(np.linspace(0, 1, 120000, dtype=np.float32).reshape(400, 300), "F"), "TIFF"), "RGB"),
        "bmp": (encode(rgb, "BMP"), "RGB"),
        "tiff": (encode(rgb, "TIFF"), "RGB"),
        "gif": (encode(rgb.convert("P"), "GIF"), "RGB"),
        "avif": (encode(rgb, "AVIF", quality=90), "RGB"),
    }


@pytest.mark.parametrize("case", list(mode_cases()))
def test_every_mode_becomes_rgb_or_rgba(case: str) -> None:
    data, mode = mode_cases()[case]
    r = process_image(data, DEMO, name=case)
    check_ok(r, mode)
    assert r.bucket == BUCKET and r.source_size == SIZE and r.output_format == "webp"
    assert pickle.loads(pickle.dumps(r)) == r


def test_cmyk_jpeg_colours_are_not_inverted() -> None:
    rgb = Image.new("RGB", SIZE, (200, 30, 40))
    back = check_ok(process_image(encode(rgb.convert("CMYK"), "JPEG", quality=100), DEMO))
    assert np.abs(np.asarray(back).astype(int) - (200, 30, 40)).max() <= 8


def test_16_bit_gradient_keeps_its_levels_with_correct_rounding() -> None:
    ramp = np.tile(np.linspace(0, 65535, 400).round().astype(np.uint16)[:, None], (1, 300))
    data = encode(Image.fromarray(ramp), "PNG")
    back = np.asarray(check_ok(process_image(data, DEMO)))
    assert len(np.unique(back[..., 0])) > 200
    assert np.all(np.diff(back[:, 0, 0].astype(int)) >= 0)  # still a monotone ramp


def test_i16_to_8bit_is_round_of_v_over_257() -> None:
    from kohaku_data.images.normalise import normalise
    v = np.array([[0, 128, 129, 257, 385, 386, 65535, 32767]], dtype=np.uint16)
    out = normalise(Image.fromarray(v), alpha="keep", background=(0, 0, 0))
    assert np.asarray(out)[0, :, 0].tolist() == [round(x / 257) for x in v[0].tolist()]


def test_exif_orientation_is_applied() -> None:
    im = Image.new("RGB", (400, 300), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 200, 300))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    r = process_image(encode(im, "JPEG", quality=95, exif=exif), DEMO)
    back = np.asarray(check_ok(r)).astype(int)
    assert r.source_size == (300, 400)
    assert back[5, back.shape[1] // 2, 0] > 200 and back[-5, back.shape[1] // 2, 2] > 200  # red on top


def test_icc_profile_converted_to_srgb() -> None:
    im = Image.new("RGB", SIZE, (128, 128, 128))
    back = check_ok(process_image(encode(im, "PNG", icc_profile=linear_rgb_icc()), DEMO))
    value = np.asarray(back)[10, 10]
    assert np.abs(value.astype(int) - 188).max() <= 2  # linear 0.502 → sRGB 188
    plain = check_ok(process_image(encode(im, "PNG"), DEMO))
    assert np.asarray(plain)[10, 10].tolist() == [128, 128, 128]


# -- alpha -----------------------------------------------------------------------------------
def red_shape_on_transparent_black(size=(600, 800)) -> Image.Image:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(im).ellipse((100, 150, 500, 650), fill=(255, 0, 0, 255))
    ImageDraw.Draw(im).line((50, 50, 550, 750), fill=(255, 0, 0, 255), width=3)
    return im


def test_rgba_resize_has_no_dark_fringe() -> None:
    back = np.asarray(check_ok(process_image(encode(red_shape_on_transparent_black(), "PNG"), DEMO), "RGBA"))
    visible = back[..., 3] > 0
    assert visible.any() and (back[..., 3] < 255).any()  # real edges exist
    assert back[visible, 0].min() >= 250  # unpremultiplied red stays red
    assert back[visible, 1].max() <= 5 and back[visible, 2].max() <= 5


def test_rgba_linear_light_has_no_dark_fringe() -> None:
    cfg = DEMO.model_copy(update={"linear_light": True})
    back = np.asarray(check_ok(process_image(encode(red_shape_on_transparent_black(), "PNG"), cfg), "RGBA"))
    visible = back[..., 3] > 0
    assert back[visible, 0].min() >= 250


def test_alpha_composite_and_opaque_alpha_dropped() -> None:
    im = red_shape_on_transparent_black()
    cfg = DEMO.model_copy(update={"alpha": "composite", "background": (0, 255, 0)})
    back = np.asarray(check_ok(process_image(encode(im, "PNG"), cfg), "RGB"))
    assert back[0, 0].tolist() == [0, 255, 0]
    opaque = gradient_rgb().convert("RGBA")
    check_ok(process_image(encode(opaque, "PNG"), DEMO), "RGB")


# -- quality ---------------------------------------------------------------------------------
def test_thin_line_art_keeps_shape_vs_float64_lanczos() -> None:
    src = Image.new("L", (900, 1200), 255)
    draw = ImageDraw.Draw(src)
    for i in range(0, 900, 37):
        draw.line((i, 0, 899 - i, 1199), fill=20, width=1)
    draw.ellipse((200, 300, 700, 900), outline=0, width=2)
    rgb = src.convert("RGB")
    r = process_image(encode(rgb, "PNG"), DEMO)
    out = np.asarray(check_ok(r))
    plan = plan_cover(rgb.size, r.bucket)
    ref = lanczos3_reference(np.asarray(src), r.bucket, plan.source_box)
    assert psnr(out[..., 0], np.clip(ref, 0, 255)) > 35


def test_stored_pixels_equal_the_intended_resize() -> None:
    rgb = gradient_rgb((700, 900))
    r = process_image(encode(rgb, "PNG"), DEMO)
    plan = plan_cover(rgb.size, r.bucket)
    intended = rgb.resize(r.bucket, Image.Resampling.LANCZOS, box=plan.source_box)
    assert np.array_equal(np.asarray(decode(r.data)), np.asarray(intended))


def test_png_codec_and_webp_small() -> None:
    for codec, fmt in (("png", "png"), ("webp-small", "webp")):
        r = process_image(encode(gradient_rgb(), "PNG"), DEMO.model_copy(update={"codec": codec}))
        check_ok(r)
        assert r.output_format == fmt and decode(r.data).format == fmt.upper()


def test_verify_rejects_different_bytes() -> None:
    intended = gradient_rgb((64, 64))
    other = intended.copy()
    other.putpixel((3, 3), (0, 0, 0))
    with pytest.raises(Rejected) as exc:
        verify(encode(other, "WEBP", lossless=True), intended)
    assert exc.value.reason == "verify_mismatch"
    verify(encode(intended, "WEBP", lossless=True, exact=True), intended)  # equal: no error


# -- hard cases ------------------------------------------------------------------------------
def noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (*SIZE[::-1], 3), dtype=np.uint8))


def animated_gif(frames: int = 3) -> bytes:
    ims = [Image.new("RGB", SIZE, (i * 80, 255 - i * 80, 0)) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:], duration=50)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "config", "reason"),
    [
        (b"", DEMO, "empty_file"),
        (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), DEMO, "unidentified"),
        (bomb_png(), DEMO, "decompression_bomb"),
        (encode(gradient_rgb(), "PNG"), DEMO.model_copy(update={"max_pixels": 1000}), "decompression_bomb"),
        (encode(noise(), "JPEG")[:3000], DEMO, "truncated"),
        (encode(noise(), "PNG")[:20000], DEMO, "truncated"),
        (animated_gif(), DEMO.model_copy(update={"animated": "skip"}), "animated_skipped"),
        (encode(gradient_rgb((100, 120)), "PNG"), DEMO, "too_small"),
        (encode(gradient_rgb((60, 40)), "PNG"), DEMO.model_copy(update={"too_small": "native"}), "too_small"),
    ],
    ids=["zero", "random", "bomb", "max_pixels", "trunc-jpeg", "trunc-png", "animated-skip", "small", "tiny-native"],
)
def test_hard_cases_are_clear_rejections(data: bytes, config: ImageConfig, reason: str) -> None:
    r = process_image(data, config, name="x")
    assert r.status == "rejected" and r.reason == reason, (r.reason, r.detail)
    assert r.reason in REJECT_REASONS and r.detail and r.data is None


def test_animated_first_frame() -> None:
    r = process_image(animated_gif(), DEMO)
    back = check_ok(r)
    assert (np.asarray(back).reshape(-1, 3) == (0, 255, 0)).all()  # the first frame only


def test_too_small_native_and_upscale() -> None:
    small = gradient_rgb((150, 200))
    native = process_image(encode(small, "PNG"), DEMO.model_copy(update={"too_small": "native"}))
    back = check_ok(native)
    assert native.bucket == (128, 192) and native.crop_box == (11, 4, 139, 196)
    assert np.array_equal(np.asarray(back), np.asarray(small)[4:196, 11:139])
    up = process_image(encode(small, "PNG"), DEMO.model_copy(update={"upscale": True}))
    assert check_ok(up).size == BUCKET


def test_linear_light_round_trips_flat_colours_exactly() -> None:
    # 256 horizontal bands, one per 8-bit value, 16 source rows tall: at scale 1/2 the Lanczos
    # support (±6 source rows) of a band's centre row stays inside the band, so it must be exact
    values = np.repeat(np.arange(256, dtype=np.uint8), 16)[:, None, None]
    src = np.broadcast_to(values, (4096, 512, 3)).copy()
    cfg = ImageConfig(bucket="sd15-512", linear_light=True)
    r = process_image(encode(Image.fromarray(src), "PNG"), cfg)
    out = np.asarray(check_ok(r, "RGB"))
    plan = plan_cover((512, 4096), r.bucket)
    assert plan.scale == 0.5
    rows = ((np.arange(256) * 16 + 8 - plan.source_box[1]) * plan.scale).astype(int)
    inside = (rows >= 0) & (rows < out.shape[0])
    assert inside.sum() > 100
    assert np.array_equal(out[rows[inside], out.shape[1] // 2, 0], np.arange(256)[inside])


def test_rgba_whose_transparency_is_cropped_away_is_stored_rgb() -> None:
    # WebP stores an all-opaque RGBA as RGB: the intended image must be RGB too (it was rejected)
    im = Image.new("RGBA", (900, 300), (10, 200, 30, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # the only transparent pixel lies outside the crop
    r = process_image(encode(im, "PNG"), DEMO)
    back = np.asarray(check_ok(r, "RGB"))
    assert r.crop_box[1] > 0 and r.source_mode == "RGBA"  # rows cut off the top
    assert (back.reshape(-1, 3) == (10, 200, 30)).all()


def test_rgba_keeps_every_pixel_of_the_source_alpha_path() -> None:
    # normalise's one-conversion alpha path must give the pixels of split → RGB → putalpha
    from kohaku_data.images.normalise import normalise
    rng = np.random.default_rng(3)
    for mode, bands in (("RGBA", 4), ("LA", 2)):
        a = rng.integers(0, 256, (40, 30, bands), dtype=np.uint8)
        out = normalise(Image.fromarray(a, mode), alpha="keep", background=(0, 0, 0))
        colour = a[..., :1].repeat(3, axis=2) if mode == "LA" else a[..., :3]
        expect = np.dstack([colour, a[..., -1]])
        assert out.mode == "RGBA" and np.array_equal(np.asarray(out), expect)
