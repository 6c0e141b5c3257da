"""`kdata query EXPR`."""


def query() -> None:
    """Danbooru-style tag query (not implemented yet)."""
    raise NotImplementedError
