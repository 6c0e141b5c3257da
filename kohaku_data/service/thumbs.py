"""Thumbnails for the browse page, made on the fly from the image sources or a built dataset.

    thumbs = Thumbnailer(ThumbConfig())
    result = await thumbs.get(("post", 1234, 256), lambda: read_bytes_somehow(), 256)   # -> Thumb

Why it looks like this:
- A server must never stall on one image. Reading and decoding run in a small pool of its own
  (Pillow releases the GIL while decoding and resampling), the request awaits it on the event
  loop (holding none of the threads that answer other endpoints) for at most `timeout`
  seconds and then answers a placeholder; the render goes on and lands in the cache.
  The same thumbnail asked twice at once is rendered once (the second waits on the first).
- Huge inputs are refused before they cost memory: a byte cap before reading, a pixel cap
  after reading the header (kdata's own `images.decode`, which also turns Pillow's
  decompression-bomb warning into a refusal), and JPEGs are decoded reduced (`draft`, 1/2..1/8)
  to no less than the thumbnail size.
- The cache is an LRU bounded by bytes and lives on the app state (no module globals).
- Every failure is a `Thumb` with a placeholder picture and a one-sentence reason, never a 500:
  missing (404), unreadable or refused (422), too slow or too busy (503).
"""

from __future__ import annotations

import asyncio
import io
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from html import escape

from kohaku_data.errors import KdataError

SIZES = (256, 1024)  # the sizes served: the grid's and the detail view's (bounds cache variety)
_LASTING = ("ok", "missing", "refused")  # outcomes worth caching (sources and datasets are fixed while served)
_RESIZABLE = ("RGB", "RGBA", "L", "LA", "CMYK")  # modes Pillow resamples well: shrink before colour work


@dataclass(frozen=True)
class ThumbConfig:
    """Limits of the thumbnail service (`kdata serve --thumb-cache-mb`, tests shrink them)."""

    cache_bytes: int = 256 << 20  # LRU bound on encoded thumbnails
    max_bytes: int = 64 << 20  # input files larger than this are refused unread
    max_pixels: int = 50_000_000  # after the header is read; a 50 MP RGB decode is ~150 MB
    timeout: float = 10.0  # seconds a request waits for its render
    workers: int = 2  # decode threads (each may hold one max_pixels image)
    queue: int = 64  # renders in flight beyond which requests are answered "busy"
    quality: int = 82  # lossy WebP: thumbnails are for eyes, not for training


class NoImage(KdataError):
    """The post has no image in any source or dataset (HTTP 404 with a placeholder)."""


class NotReady(KdataError):
    """The image sources are still being indexed (HTTP 503 with a placeholder)."""


@dataclass(frozen=True)
class Thumb:
    """A rendered thumbnail (status 200) or a placeholder with the reason it stands in."""

    data: bytes
    media_type: str
    status: int
    state: str  # ok | missing | refused | timeout | busy
    reason: str = ""
    cached: bool = False


class ByteLRU:
    """A least-recently-used map bounded by the total size of its values (thread-safe); a value
    is bytes or anything with a `.data` of bytes, and counts as that many bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Store `value`, evicting the oldest entries; a value over the whole bound is not kept."""
        if _nbytes(value) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.bytes -= _nbytes(old) if old is not None else 0
            self._items[key] = value
            self.bytes += _nbytes(value)
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= _nbytes(evicted)

    def __len__(self) -> int:
        return len(self._items)


def _nbytes(value: Any) -> int:
    return len(value if isinstance(value, bytes) else value.data)


class Thumbnailer:
    """The bounded render pool, the in-flight table and the cache of one app."""

    def __init__(self, config: ThumbConfig) -> None:
        self.config = config
        self.cache = ByteLRU(config.cache_bytes)
        self._pool = ThreadPoolExecutor(config.workers, thread_name_prefix="kdata-thumb")
        self._inflight: dict[Hashable, Future[Thumb]] = {}
        self._lock = threading.Lock()

    async def get(self, key: Hashable, read: Callable[[], bytes], size: int) -> Thumb:
        """The thumbnail of `key` at `size` px; `read` (run in the pool) gives the original bytes
        or raises NoImage / KdataError. Awaited on the event loop: a waiting request holds no
        thread, so slow renders never take the threads that answer the other endpoints."""
        known = self.cache.get(key)
        if known is not None:
            return replace(known, cached=True)
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                if len(self._inflight) >= self.config.queue:
                    return placeholder(503, "busy", "the server is rendering many thumbnails; try again shortly")
                future = self._pool.submit(self._render, key, read, size)
                self._inflight[key] = future
        try:  # shield: a request that gives up must not cancel a render queued for the cache
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.config.timeout)
        except TimeoutError:
            return placeholder(503, "timeout", f"rendering took over {self.config.timeout:g} s; it goes on, try again shortly")

    def _render(self, key: Hashable, read: Callable[[], bytes], size: int) -> Thumb:
        try:
            thumb = self._make(read, size)
            if thumb.state in _LASTING:  # a missing or unreadable file stays so; "busy" does not
                self.cache.put(key, thumb)
            return thumb
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _make(self, read: Callable[[], bytes], size: int) -> Thumb:
        try:
            data = read()
        except NoImage as exc:
            return placeholder(404, "missing", str(exc))
        except NotReady as exc:
            return placeholder(503, "busy", str(exc))
        except KdataError as exc:
            return placeholder(422, "refused", str(exc))
        except OSError as exc:  # a shard or file that went away under a running server
            return placeholder(422, "refused", f"the image cannot be read ({exc})")
        if len(data) > self.config.max_bytes:
            return placeholder(422, "refused", f"the file has {len(data)} bytes, over the {self.config.max_bytes} byte cap")
        try:
            return Thumb(render(data, size, self.config), "image/webp", 200, "ok")
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a refused picture, not a 500
            from kohaku_data.images.errors import Rejected

            reason = f"{exc.reason}: {exc.detail}" if isinstance(exc, Rejected) else f"{type(exc).__name__}: {exc}"
            return placeholder(422, "refused", f"the image cannot be shown ({reason})")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def render(data: bytes, size: int, config: ThumbConfig) -> bytes:
    """Bytes of any image kdata reads → a lossy WebP no larger than size x size (the first frame
    of an animation; alpha over white). Raises images' `Rejected` on bombs, truncation, junk."""
    from PIL import Image

    from kohaku_data.images.decode import decode
    from kohaku_data.images.normalise import normalise

    max_pixels, draft = _plan(data, size, config.max_pixels)
    im = decode(data, max_pixels=max_pixels, animated="first", draft=draft)
    if im.mode in _RESIZABLE:  # shrink first: the colour work then touches only the small image
        im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
        im = normalise(im, alpha="composite", background=(255, 255, 255))
    else:  # palette, 16-bit, float...: to 8-bit RGB first (Pillow resamples those poorly or not at all)
        im = normalise(im, alpha="composite", background=(255, 255, 255))
        im.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    im.save(out, format="WEBP", quality=config.quality, method=4)
    return out.getvalue()


def _plan(data: bytes, size: int, max_pixels: int) -> tuple[int, tuple[int, int]]:
    """(pixel cap, draft size) for `decode`. A JPEG decodes at 1/2..1/8 scale (`draft`) to no
    less than the thumbnail's own size, so its cap applies to the pixels actually decoded: a
    60 MP JPEG costs ~1 MP at 1/8. Other formats decode in full and keep the plain cap. Only the
    header is read here; anything unreadable is left to `decode`, which says why."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # decode() refuses those
            with Image.open(io.BytesIO(data)) as im:
                (w, h), fmt = im.size, im.format
    except Exception:  # noqa: BLE001 - decode() reports it with the precise reason
        return max_pixels, (size, size)
    if w <= 0 or h <= 0:
        return max_pixels, (size, size)
    ratio = min(1.0, size / max(w, h))
    target = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    if fmt != "JPEG":
        return max_pixels, target
    scale = next(s for s in (8, 4, 2, 1) if w // s >= target[0] and h // s >= target[1])
    return max_pixels * scale * scale, target


def placeholder(status: int, state: str, reason: str) -> Thumb:
    """A square SVG that says why there is no picture (browsers draw an image body of any status)."""
    label = {"missing": "no image", "refused": "cannot show", "timeout": "still rendering",
             "busy": "busy"}.get(state, state)
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256" viewBox="0 0 256 256">'
           '<rect width="256" height="256" fill="#e8e8ea"/>'
           '<path d="M88 160l28-36 22 26 16-18 26 28z" fill="#c4c4cc"/><circle cx="160" cy="100" r="12" fill="#c4c4cc"/>'
           f'<text x="128" y="200" font-family="sans-serif" font-size="18" text-anchor="middle" fill="#666">{escape(label)}</text>'
           f'<title>{escape(reason)}</title></svg>')
    return Thumb(svg.encode(), "image/svg+xml", status, state, reason)


class SourceSet:
    """The image sources of `kdata serve --src` (folders, tars, URLs; `sources.open_source`),
    indexed in a thread started here so the server answers at once; lookups wait for it. A root
    that is a `sources.SourceRoot` brings its index root (`--src-index`) along."""

    def __init__(self, roots: list[str]) -> None:
        from kohaku_data import storage
        from kohaku_data.sources import SourceError

        self.roots = list(roots)
        for root in self.roots:  # a typo should stop start-up, not show placeholders later
            if not storage.exists(root):
                raise SourceError(f"image source {root} does not exist: pass a folder of <id>.<ext> files or tars, or a URL")
            index_root = getattr(root, "index_root", None)  # a `sources.SourceRoot` (--src-index)
            if index_root is not None and not storage.exists(index_root):
                raise SourceError(f"index folder {index_root} of image source {root} does not exist: pass the folder "
                                  "(or URL) that holds its tars' .json indexes at the same relative paths")
        self._sources: list = []
        self._error: str | None = None
        self._ready = threading.Event()
        if self.roots:
            threading.Thread(target=self._open, name="kdata-source-index", daemon=True).start()
        else:
            self._ready.set()

    def _open(self) -> None:
        from kohaku_data.sources import open_source

        try:
            self._sources = [open_source(root) for root in self.roots]
        except Exception as exc:  # noqa: BLE001 - reported on every lookup instead of killing the thread
            self._error = f"the image sources could not be indexed: {exc}"
        finally:
            self._ready.set()

    def wait(self, timeout: float | None = None) -> bool:
        """True once indexing finished (with or without an error)."""
        return self._ready.wait(timeout)

    @property
    def error(self) -> str | None:
        return self._error

    def files(self) -> int:
        return sum(len(s) for s in self._sources)

    def read(self, key: int, max_bytes: int) -> bytes | None:
        """The bytes of post `key` from the first source that has it; None when none has it.
        A file over `max_bytes` is refused unread."""
        from kohaku_data.sources import entries_of, read_entry

        if not self._ready.is_set():
            raise NotReady("the image sources are still being indexed; try again shortly")
        if self._error:
            raise KdataError(self._error)
        for source in self._sources:
            keys = source.files["key"]
            i = int(keys.search_sorted(key))
            if i < len(keys) and keys[i] == key:
                entry = entries_of(source, source.files.slice(i, 1))[0]
                if entry.size > max_bytes:
                    raise KdataError(f"{entry.name} has {entry.size} bytes, over the {max_bytes} byte cap")
                return read_entry(entry)
        return None
