"""`kdata sample OUT`."""


def sample() -> None:
    """Write a deterministic sample DB and raw images (not implemented yet)."""
    raise NotImplementedError
