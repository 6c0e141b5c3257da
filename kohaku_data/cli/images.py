"""`kdata images SRC OUT`."""


def images() -> None:
    """Run the lossless image stage over a folder (not implemented yet)."""
    raise NotImplementedError
