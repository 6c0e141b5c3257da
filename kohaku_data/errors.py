"""The base error of kdata. Every error raised on bad input says what to do about it."""


class KdataError(Exception):
    """An error the CLI prints as one clear sentence (no traceback) and exits non-zero on."""
