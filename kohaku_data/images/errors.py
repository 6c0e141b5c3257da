"""The one internal signal of the stage: an input that cannot become a correct output."""

from __future__ import annotations


class Rejected(Exception):
    """Raised inside the stage; `process_image` turns it into an `ImageResult(status="rejected")`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
