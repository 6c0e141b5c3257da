"""What to do about each reject reason: the build summary prints one fix beside each count.

Reasons come from the plan (`plan.py`), the sources (`sources.py`), the image task (`tasks.py`),
the image stage (`images.REJECT_REASONS`) and curation (`duplicate`); a reason without a fix
here (a new one) is pointed at rejects.parquet.
"""

from __future__ import annotations

_REDOWNLOAD = "the file is damaged; download it again"

REJECT_FIXES: dict[str, str] = {
    "file_without_post": "files whose id is no post in the DB; import a DB that has them (kdata db import), else nothing to do",
    "post_without_file": "posts the query selects with no file in --src; download them, or narrow the recipe's query",
    "md5_mismatch": f"{_REDOWNLOAD} (its md5 is not the post's); or check_md5 = false if your copies differ on purpose",
    "unreadable_source": "the file could not be read; check its permissions and the --src path",
    "post_missing": "the post left the DB during the build; rerun the build",
    "unsafe_member_name": "tar members with unsafe paths are never read; repack the tar",
    "tar_link": "links inside a tar are never followed; repack the tar with the files themselves",
    "corrupt_tar": "the tar is damaged; download it again",
    "corrupt_tar_member": "the tar is damaged; download it again",
    "not_a_post_id": "file names must be <post id>.<ext>; rename them or move them out of --src",
    "unsupported_extension": "not an image extension kdata reads; convert or remove these files",
    "duplicate_key": "two files with one post id; keep one of them",
    "empty_file": "0-byte files; download them again",
    "unidentified": "not an image format kdata reads; download them again or remove them",
    "truncated": "the file ends early; download it again",
    "decode_error": "the decoder failed on the file; download it again",
    "decompression_bomb": "more pixels than image.max_pixels; raise max_pixels if you trust these files",
    "animated_skipped": 'animated images with image.animated = "skip"; use animated = "first" to keep their first frame',
    "exif_error": "the EXIF orientation cannot be read; fix or strip the files' EXIF",
    "unsupported_mode": "a pixel mode that cannot become RGB/RGBA; convert these files",
    "too_small": 'images smaller than their bucket; use a smaller bucket preset (image.bucket) or image.too_small = "native"',
    "encode_error": 'the encoder failed; try image.codec = "png", and please report it',
    "verify_mismatch": 'the stored bytes did not decode to the same pixels; try image.codec = "png", and please report it',
    "internal_error": "a bug in kdata, not bad input: see the log named below and please report it",
    "duplicate": 'duplicates removed by [dedup]; dedup.policy = "off" or a lower dedup.threshold keeps more',
}


def reject_fix(reason: str) -> str:
    """The one-line fix for a reject reason (a generic pointer for a reason without one)."""
    return REJECT_FIXES.get(reason, "see the detail column of rejects.parquet")
