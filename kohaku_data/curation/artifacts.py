"""Recipe rules on the source artifact measures (`Recipe.artifacts`, kohaku_data/images/artifacts).

Applied on the driver as shards are laid out (`ShardLayout.add`): the measures travel in each
staged header, so changing a rule re-lays the shards but never re-runs the image stage.

- `verdict`: a reject (reason, detail with the measured value) or None. Reasons: `jpeg_quality`
  (a JPEG source, or with `history_quality` a lossless one's past JPEG, below the quality),
  `jpeg_history` (a lossless source whose JPEG-history evidence reaches `history_threshold`),
  `upscaled` (measured factor at or above `reject_upscaled_above`).
- `tags`: Danbooru's own names (`jpeg_artifacts`, `upscaled`) a kept sample earns;
  `tag_caption` adds the ones its post lacks to the caption (after the caption's last tag,
  formatted as the caption's tags are) and to `tags.meta`.
"""

from __future__ import annotations

from typing import Any

from kohaku_data.config import ArtifactRules, CaptionConfig

JPEG_TAG, UPSCALED_TAG = "jpeg_artifacts", "upscaled"


def _history(m: dict[str, Any], rules: ArtifactRules) -> float | None:
    h = m.get("jpeg_history")
    return h if h is not None and h >= rules.history_threshold else None


def _quality(m: dict[str, Any], rules: ArtifactRules) -> tuple[int, str] | None:
    """(quality, where from) of the source's JPEG coding, current or past."""
    if m.get("jpeg_quality") is not None:
        return m["jpeg_quality"], "JPEG quality"
    if rules.history_quality and _history(m, rules) is not None and m.get("jpeg_history_quality") is not None:
        return m["jpeg_history_quality"], "past JPEG quality (history)"
    return None


def verdict(m: dict[str, Any], rules: ArtifactRules) -> tuple[str, str] | None:
    """(reason, detail) when the rules reject a source with measures `m`, else None."""
    quality = _quality(m, rules)
    if rules.reject_jpeg_quality_below is not None and quality and quality[0] < rules.reject_jpeg_quality_below:
        return "jpeg_quality", f"{quality[1]} {quality[0]} < {rules.reject_jpeg_quality_below}"
    history = _history(m, rules)
    if rules.reject_jpeg_history and history is not None:
        past = m.get("jpeg_history_quality")
        return "jpeg_history", (f"jpeg_history {history:.3f} >= {rules.history_threshold}"
                                + (f" (past quality ~{past})" if past is not None else ""))
    factor = m.get("upscale_factor")
    if rules.reject_upscaled_above is not None and factor is not None and factor >= rules.reject_upscaled_above:
        return "upscaled", (f"upscale_factor {factor:g} >= {rules.reject_upscaled_above:g} "
                            f"({m.get('upscale_kind')}; effective {m.get('effective_width')}x{m.get('effective_height')})")
    return None


def tags(m: dict[str, Any], rules: ArtifactRules) -> list[str]:
    """The Danbooru tags the measures earn under the rules (raw names, in a fixed order)."""
    out = []
    quality = _quality(m, rules)
    low = rules.tag_jpeg_quality_below is not None and quality is not None and quality[0] < rules.tag_jpeg_quality_below
    if low or (rules.tag_jpeg_history and _history(m, rules) is not None):
        out.append(JPEG_TAG)
    factor = m.get("upscale_factor")
    if rules.tag_upscaled_above is not None and factor is not None and factor >= rules.tag_upscaled_above:
        out.append(UPSCALED_TAG)
    return out


# the keys a re-caption may change (kohaku_data/assembly/recaption.py): they only add tags
TAG_KEYS = ("tag_jpeg_quality_below", "tag_jpeg_history", "tag_upscaled_above")


def tagged_caption(caption: dict[str, Any], m: dict[str, Any], rules: ArtifactRules,
                   config: CaptionConfig) -> dict[str, Any]:
    """The caption row with the tags the measures `m` earn and the post lacks, and those in
    `artifact_tags` (the manifest's column): what a build and a re-caption both write."""
    tagged, added = tag_caption(caption, tags(m, rules), config)
    return {**tagged, "artifact_tags": added}


def tag_caption(caption: dict[str, Any], earned: list[str], config: CaptionConfig) -> tuple[dict[str, Any], list[str]]:
    """(caption row with the earned tags its post lacks added, the tags added)."""
    have = {t for key, v in caption.items() if key.startswith("tags_") and isinstance(v, list) for t in v}
    added = [t for t in earned if t not in have]
    if not added:
        return caption, []
    shown = [_format(t, config) for t in added]
    out = {**caption, "tags_meta": [*(caption.get("tags_meta") or []), *added]}
    for key in ("caption", "tag_caption"):
        text = caption.get(key)
        if key == "caption" and config.caption_mode != "tags":
            continue  # the .txt holds text: the tags go to the tag caption only
        if isinstance(text, str):
            out[key] = config.separator.join([text, *shown]) if text else config.separator.join(shown)
    return out, added


def _format(tag: str, config: CaptionConfig) -> str:
    """As the caption shows a tag: underscores to spaces for names longer than 3 characters."""
    name = tag.replace("_", " ") if config.underscore_to_space and len(tag) > 3 else tag
    return name.replace("(", "\\(").replace(")", "\\)") if config.escape_parens else name
