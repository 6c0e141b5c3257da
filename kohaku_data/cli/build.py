"""`kdata build` and `kdata verify`."""


def build() -> None:
    """Build shards from a recipe (not implemented yet)."""
    raise NotImplementedError


def verify() -> None:
    """Verify a built dataset (not implemented yet)."""
    raise NotImplementedError
