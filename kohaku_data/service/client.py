"""A polite HTTP client for Danbooru-compatible APIs.

Politeness is the default, not an option: at most `rate` requests per second, a descriptive
User-Agent, exponential backoff with jitter on 429 / 5xx / timeouts / truncated bodies
(honouring `Retry-After`), and a hard stop after `max_failures` consecutive failures.

Credentials come from `KDATA_DANBOORU_LOGIN` / `KDATA_DANBOORU_API_KEY` and are sent as HTTP
basic auth (Danbooru accepts it), never in the URL: httpx logs request URLs at INFO level, so a
key in the query string would end up in logs.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from kohaku_data import __version__
from kohaku_data.errors import KdataError

log = logging.getLogger(__name__)

# Danbooru asks API clients for a descriptive User-Agent; operators add a contact to it with
# `kdata sync --user-agent` (or KDATA_USER_AGENT), e.g. "kohaku-data/0.1 (you@example.org)".
USER_AGENT = f"kohaku-data/{__version__}"
LOGIN_ENV = "KDATA_DANBOORU_LOGIN"
API_KEY_ENV = "KDATA_DANBOORU_API_KEY"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524})


class SyncError(KdataError):
    """The remote API failed for good (too many consecutive failures, or a refused request)."""


@dataclass(frozen=True)
class ClientSettings:
    rate: float = 2.0  # requests per second, at most
    timeout: float = 30.0  # seconds per request (connect, read, write)
    max_failures: int = 6  # consecutive failures before giving up
    backoff_base: float = 1.0  # first retry waits about this long, then doubles
    backoff_max: float = 120.0
    retry_after_max: float = 600.0  # a server asking for longer than this is not waited for
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise SyncError(f"rate must be > 0 requests/s, got {self.rate}")
        if self.max_failures < 1:
            raise SyncError(f"max_failures must be >= 1, got {self.max_failures}")
        if not self.user_agent.strip() or not self.user_agent.isprintable() or not self.user_agent.isascii():
            raise SyncError(f"user agent must be printable ASCII text, got {self.user_agent!r}")


def credentials_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(login, api_key) from the environment, or None. Both or neither must be set."""
    env = os.environ if env is None else env
    login, key = env.get(LOGIN_ENV, ""), env.get(API_KEY_ENV, "")
    if bool(login) != bool(key):
        raise SyncError(f"set both {LOGIN_ENV} and {API_KEY_ENV}, or neither")
    return (login, key) if login else None


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's Retry-After, if any."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class DanbooruClient:
    """GET JSON from one base URL, politely. Use as a context manager (closes the pool)."""

    def __init__(
        self,
        base_url: str,
        settings: ClientSettings | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        # Injectable so tests run backoff/rate logic without real waiting; production uses
        # the real clock.
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = normalize_base_url(base_url)
        self.settings = settings or ClientSettings()
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._next_slot = 0.0
        self._lock = threading.Lock()
        timeout = httpx.Timeout(self.settings.timeout)
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, auth=credentials,
            headers={"User-Agent": self.settings.user_agent, "Accept": "application/json"},
            follow_redirects=True,
        )
        self.requests_made = 0

    def __enter__(self) -> "DanbooruClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- public ------------------------------------------------------------------------------
    def get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET `path` and decode JSON, retrying transient failures with backoff."""
        failures = 0
        while True:
            try:
                return self._attempt(path, params)
            except _Transient as exc:
                failures += 1
                if failures >= self.settings.max_failures:
                    raise SyncError(
                        f"{self.base_url}{path}: giving up after {failures} consecutive failures "
                        f"(last: {exc}). The server may be down or rate limiting; try again later "
                        f"or lower --rate."
                    ) from None
                wait = self._backoff(failures, exc.wait)
                log.warning("%s%s: %s; retry %d in %.2fs", self.base_url, path, exc, failures, wait)
                self._sleep(wait)

    # -- internals ---------------------------------------------------------------------------
    def _attempt(self, path: str, params: Mapping[str, Any] | None) -> Any:
        self._wait_for_slot()
        self.requests_made += 1
        try:
            response = self._http.get(path, params=params)
        except httpx.TimeoutException as exc:
            raise _Transient(f"timed out ({type(exc).__name__})") from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            # RemoteProtocolError covers a body cut short of its Content-Length.
            raise _Transient(f"connection failed ({type(exc).__name__}: {exc})") from None
        if response.status_code in _RETRY_STATUS:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise _Transient(f"HTTP {response.status_code}", wait)
        if response.status_code in (401, 403):
            raise SyncError(
                f"{self.base_url}{path}: HTTP {response.status_code} — check "
                f"{LOGIN_ENV}/{API_KEY_ENV} (the key is not shown here)"
            )
        if response.status_code >= 400:
            raise SyncError(f"{self.base_url}{path}: HTTP {response.status_code}: {response.text[:200]}")
        try:
            return json.loads(response.content)
        except ValueError:
            # A proxy can cut a body short while still closing cleanly: retry.
            raise _Transient(f"truncated or invalid JSON body ({len(response.content)} bytes)") from None

    def _wait_for_slot(self) -> None:
        """Space request starts at least 1/rate seconds apart."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next_slot)
            self._next_slot = start + 1.0 / self.settings.rate
        if start > now:
            self._sleep(start - now)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        s = self.settings
        if retry_after is not None:
            if retry_after > s.retry_after_max:
                raise SyncError(
                    f"{self.base_url}: server asked to wait {retry_after:.0f}s (Retry-After); "
                    f"try again later"
                )
            return retry_after
        # Full jitter: spreads retries of many clients instead of synchronising them.
        cap = min(s.backoff_max, s.backoff_base * 2 ** (failures - 1))
        return cap / 2 + self._rng.uniform(0, cap / 2)


def normalize_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise SyncError(f"base URL must start with http:// or https://, got {url!r}")
    return url


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))  # delta-seconds (fractions accepted)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
