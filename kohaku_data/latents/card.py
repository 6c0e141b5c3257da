"""The dataset card's `## Latents` section after `kdata latents`.

The card (assembly/card.py) is written by the build, before any latent set exists; it shows the
latent sets it finds (a later rebuild keeps the section). `kdata latents` then puts the same
section — `latents_section` of `latent_facts`, from the latent locks of the dataset — into the
existing README.md: in place of the one there, else before `## Files` (where the card writer
puts it), else at the end. The rest of the README is untouched, and the same sets give the
same bytes.
"""

from __future__ import annotations

from kohaku_data import storage
from kohaku_data.assembly.card import LATENTS_HEADING, README_NAME, latents_section
from kohaku_data.assembly.card_data import latent_facts
from kohaku_data.latents.files import latent_view

_FILES_HEADING = "## Files"


def refresh_card(dataset: storage.Target) -> bool:
    """Rewrite the README's latents section from the sets the dataset holds (a folder, or a URL:
    its small files read through a local view); True when its bytes changed."""
    with latent_view(dataset, README_NAME) as view:
        readme = view / README_NAME
        if not readme.is_file():
            return False
        text = readme.read_text(encoding="utf-8")
        new = with_latents_section(text, latents_section(latent_facts(view)))
    if new == text:
        return False
    storage.commit_bytes(storage.join(dataset, README_NAME), new.encode())  # whole: a disk's rename, one PUT
    return True


def with_latents_section(text: str, section: str) -> str:
    """`text` (a card's markdown) with its latents section replaced by `section` ("" removes it)."""
    start = _heading(text, LATENTS_HEADING)
    if start >= 0:
        end = _heading(text, "## ", start + 1)
        end = len(text) if end < 0 else end
        tail = text[end:]
        head = text[:start]
    else:
        at = _heading(text, _FILES_HEADING)
        head, tail = (text, "") if at < 0 else (text[:at], text[at:])
    if not section:
        return head + tail
    if not tail:  # the last section: no blank line after it
        return head.rstrip("\n") + "\n\n" + section if head else section
    return head + section + "\n" + tail


def _heading(text: str, heading: str, start: int = 0) -> int:
    """Where a line starting with `heading` begins (at or after `start`), or -1."""
    if start == 0 and text.startswith(heading):
        return 0
    at = text.find("\n" + heading, max(0, start - 1))
    return -1 if at < 0 else at + 1
