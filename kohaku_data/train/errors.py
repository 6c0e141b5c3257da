"""Errors of the training reader; each message says what to do (KdataError: one clear sentence)."""

from kohaku_data.errors import KdataError


class ReaderError(KdataError):
    """A dataset the reader cannot open or read: missing files, a manifest without offsets."""


class SamplerError(KdataError):
    """Bad sampler arguments, or a saved state that does not fit this run."""
