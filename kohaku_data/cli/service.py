"""`kdata sync` and `kdata serve`."""


def sync() -> None:
    """Incremental sync from a Danbooru-compatible API (not implemented yet)."""
    raise NotImplementedError


def serve() -> None:
    """Read-only HTTP API (not implemented yet)."""
    raise NotImplementedError
