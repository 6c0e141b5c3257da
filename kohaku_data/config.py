"""All configuration in one typed place.

- `Settings`: where things are (DB path, default recipe, output folders). Each value comes from
  the command option, else an environment variable (`KDATA_DB`, `KDATA_RECIPE`,
  `KDATA_DATASETS`), else `kdata.toml` in the working directory.
- `Recipe`: what a dataset version is (query, image presets, caption config, shard size), read
  from `pipelines/*.toml`. Every stage takes its part of the recipe and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kohaku_data.errors import KdataError
from kohaku_data.recipe_problems import Problem, choice_error, find_problems, problems_error


class ConfigError(KdataError):
    """A setting is missing or a recipe is invalid."""


class RecipeError(ConfigError):
    """A recipe has problems: one sentence each (key, file and line, did-you-mean), all listed.
    Bad input, not a failure: the CLI exits 2, as for a bad option."""

    exit_code = 2

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [p.sentence(source) for p in problems]
        head = f"recipe {source} has {len(problems)} problem{'s' if len(problems) != 1 else ''}; nothing was built:"
        super().__init__("\n  ".join([head, *lines]))


class _Strict(BaseModel):
    # Unknown keys in a recipe are typos, not extensions: refuse them.
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Keys added after datasets were built with this model: left out of the recipe's hash while
    # they hold their default, so a recipe that does not use them keeps the sha256 it had (a
    # rebuild of an existing dataset needs no --force). A new key goes here when it is added.
    hash_omit_default: ClassVar[frozenset[str]] = frozenset()


def hash_form(model: BaseModel) -> dict[str, Any]:
    """model_dump(mode="json") less every `hash_omit_default` key (at any depth) equal to its
    default: the form a recipe's sha256 is computed from."""
    dumped = model.model_dump(mode="json")
    _drop_new_defaults(model, dumped)
    return dumped


def _drop_new_defaults(model: BaseModel, dumped: dict[str, Any]) -> None:
    fields = type(model).model_fields
    omit = getattr(model, "hash_omit_default", frozenset())
    for name, field in fields.items():
        value = getattr(model, name)
        if name in omit and value == field.get_default(call_default_factory=True):
            dumped.pop(name, None)
        elif isinstance(value, BaseModel) and isinstance(dumped.get(name), dict):
            _drop_new_defaults(value, dumped[name])


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------
SETTINGS_FILE = "kdata.toml"


class Settings(_Strict):
    db: Path | None = None
    recipe: Path | None = None
    datasets: Path = Path("datasets")
    # Where `kdata build` runs its tasks: the local process pool, or a Ray cluster (the `ray`
    # extra) at `ray_address` ("auto": $RAY_ADDRESS or the cluster this machine is in; HOST:PORT).
    executor: Literal["local", "ray"] = "local"
    ray_address: str = "auto"
    ray_task_timeout: float = Field(1800.0, gt=0)  # s before a Ray task counts as hung and is resubmitted

    def require_db(self) -> Path:
        if self.db is None:
            raise ConfigError(
                "No database set: pass --db PATH, set KDATA_DB=PATH, or put db = \"PATH\" "
                f"in ./{SETTINGS_FILE} (make one with `kdata sample OUT` or `kdata db init`)."
            )
        return self.db


def load_settings(
    *, db: Path | None = None, recipe: Path | None = None, datasets: Path | None = None,
    executor: str | None = None, ray_address: str | None = None, cwd: Path | None = None,
) -> Settings:
    """Option > environment > ./kdata.toml > default, per setting."""
    cwd = cwd or Path.cwd()
    file_values = _read_settings_file(cwd / SETTINGS_FILE)

    def pick(option: Path | None, env: str, key: str) -> Path | None:
        if option is not None:
            return Path(option)
        if os.environ.get(env):
            return Path(os.environ[env])
        if key in file_values:
            return (cwd / file_values[key]) if not Path(file_values[key]).is_absolute() else Path(file_values[key])
        return None

    def pick_text(option: str | None, env: str, key: str) -> dict[str, str]:
        value = option or os.environ.get(env) or file_values.get(key)
        return {key: value} if value else {}

    try:
        return Settings(
            db=pick(db, "KDATA_DB", "db"),
            recipe=pick(recipe, "KDATA_RECIPE", "recipe"),
            datasets=pick(datasets, "KDATA_DATASETS", "datasets") or Path("datasets"),
            **pick_text(executor, "KDATA_EXECUTOR", "executor"),
            **pick_text(ray_address, "KDATA_RAY_ADDRESS", "ray_address"),
            **pick_text(None, "KDATA_RAY_TASK_TIMEOUT", "ray_task_timeout"),
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid setting ({problems}): fix the option, the KDATA_* variable or {SETTINGS_FILE}") from None


def _read_settings_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    known = ("db", "recipe", "datasets", "executor", "ray_address", "ray_task_timeout")
    unknown = set(data) - set(known)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}; known: {', '.join(known)}")
    return {k: str(v) for k, v in data.items()}


# --------------------------------------------------------------------------------------------
# Image stage
# --------------------------------------------------------------------------------------------
class BucketPreset(_Strict):
    """Aspect-ratio buckets as NovelAI / kohya sd-scripts make them."""

    name: str = "kohaku-xl"
    step: int = 64  # both sides are multiples of this
    min_area: int = 786_432  # 768x1024
    max_area: int = 1_310_720  # 1024x1280
    min_side: int = 512
    max_side: int = 2048
    max_aspect: float = 4.0  # long side / short side


BUCKET_PRESETS: dict[str, BucketPreset] = {
    "kohaku-xl": BucketPreset(),
    "sdxl-1024": BucketPreset(name="sdxl-1024", min_area=1024 * 1024 - 64 * 64 * 8, max_area=1024 * 1024),
    "sd15-512": BucketPreset(name="sd15-512", min_area=256 * 256, max_area=512 * 512, min_side=256, max_side=1024),
    "demo-256": BucketPreset(name="demo-256", min_area=192 * 256, max_area=256 * 320, min_side=128, max_side=512),
    # resolution ladder levels (`[image] levels`): ~256² and ~512² areas, aspect buckets as above
    "square-256": BucketPreset(name="square-256", step=32, min_area=224 * 256, max_area=256 * 256,
                               min_side=128, max_side=512),
    "square-512": BucketPreset(name="square-512", min_area=448 * 512, max_area=512 * 512,
                               min_side=256, max_side=1024),
}
# A level's name becomes part of its member name (`<id>.<level>.webp`): no dots, not a member suffix.
_LEVEL_NAME = r"^[a-z0-9][a-z0-9_-]*$"
_RESERVED_LEVEL_NAMES = frozenset({"webp", "png", "txt", "json", "jpg", "jpeg"})


class CodecPreset(_Strict):
    """Lossless storage. WebP lossless with exact=True keeps RGB under alpha=0 bit-exact."""

    name: str = "webp-fast"
    format: Literal["webp", "png"] = "webp"
    method: int = Field(0, ge=0, le=6)  # WebP effort
    quality: int = Field(0, ge=0, le=100)  # WebP lossless: effort, not loss
    png_compress_level: int = Field(6, ge=0, le=9)


CODEC_PRESETS: dict[str, CodecPreset] = {
    "webp-fast": CodecPreset(),
    "webp-small": CodecPreset(name="webp-small", method=4, quality=80),
    "png": CodecPreset(name="png", format="png"),
}


class ImageConfig(_Strict):
    bucket: str | BucketPreset = "kohaku-xl"
    codec: str | CodecPreset = "webp-fast"
    alpha: Literal["keep", "composite"] = "keep"
    background: tuple[int, int, int] = (255, 255, 255)  # for alpha = "composite"
    animated: Literal["first", "skip"] = "first"
    too_small: Literal["reject", "native"] = "reject"  # never upscale by default
    upscale: bool = False
    reducing_gap: float | None = None  # opt-in speed-up for large reductions
    linear_light: bool = False  # opt-in: resize in linear light
    max_pixels: int = 178_956_970  # larger is a decompression bomb (an error)
    # An upscaled source (kohaku_data/images/artifacts: measured factor) is bucketed at its
    # effective resolution (size / factor): a 2x upscale of a 600 px drawing is not a 1200 px one
    effective_resolution: bool = False
    # Resolution ladder: more image members per sample, each a bucket preset (name or inline
    # table) resized once from the same decoded original with every other setting above; the
    # main `bucket` stays `<id>.webp`, a level is `<id>.<level name>.webp` (docs/shards-and-exports.md)
    levels: tuple[str | BucketPreset, ...] = ()
    hash_omit_default: ClassVar[frozenset[str]] = frozenset({"effective_resolution", "levels"})

    @field_validator("levels")
    @classmethod
    def _known_levels(cls, value):
        import re

        names = []
        for level in value:
            if isinstance(level, str) and level not in BUCKET_PRESETS:
                raise choice_error("bucket preset", level, BUCKET_PRESETS)
            name = level if isinstance(level, str) else level.name
            if not re.match(_LEVEL_NAME, name) or name in _RESERVED_LEVEL_NAMES:
                raise ValueError(f"level name {name!r} must be lowercase letters, digits, - or _ (no dots), "
                                 "and not a member suffix")
            names.append(name)
        if len(set(names)) != len(names):
            raise ValueError("levels must have distinct names")
        return value

    def level_names(self) -> tuple[str, ...]:
        """The extra levels' names, in recipe order (each member is `<id>.<name>.<ext>`)."""
        return tuple(level if isinstance(level, str) else level.name for level in self.levels)

    def level_configs(self) -> tuple[tuple[str, "ImageConfig"], ...]:
        """(name, the image config of that level alone): this config with its bucket and no levels."""
        return tuple((name, self.model_copy(update={"bucket": level, "levels": ()}))
                     for name, level in zip(self.level_names(), self.levels))

    @field_validator("bucket")
    @classmethod
    def _known_bucket(cls, value):
        if isinstance(value, str) and value not in BUCKET_PRESETS:
            raise choice_error("bucket preset", value, BUCKET_PRESETS)
        return value

    @field_validator("codec")
    @classmethod
    def _known_codec(cls, value):
        if isinstance(value, str) and value not in CODEC_PRESETS:
            raise choice_error("codec preset", value, CODEC_PRESETS)
        return value

    def bucket_preset(self) -> BucketPreset:
        return _preset(self.bucket, BUCKET_PRESETS, "bucket")

    def codec_preset(self) -> CodecPreset:
        return _preset(self.codec, CODEC_PRESETS, "codec")


def _preset(value, presets: dict, kind: str):
    if not isinstance(value, str):
        return value
    if value not in presets:
        import difflib

        close = difflib.get_close_matches(value, list(presets), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown {kind} preset {value!r}{hint} (known: {', '.join(presets)})")
    return presets[value]


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------
QUALITY_BANDS = (
    "masterpiece", "best quality", "great quality", "good quality",
    "normal quality", "low quality", "worst quality",
)
# Posts per caption chunk: memory grows with it; 25k keeps two page readers and the captioner
# busy from the first page on (100k pages start slower and hold 4x the memory, for no gain).
CAPTION_CHUNK_SIZE = 25_000
YEAR_TAGS = ("newest", "recent", "mid", "early", "old")
NON_VISUAL_META = (
    "(medium)", "commentary", "bad", "translat", "request", "mismatch", "revision", "audio", "video",
)
# General tags that go to the kept part (before `|||`), as in hakubooru's KohakuCaptioner.
COUNT_TAGS = (
    "1girl", "2girls", "3girls", "4girls", "5girls", "6+girls", "multiple_girls",
    "1boy", "2boys", "3boys", "4boys", "5boys", "6+boys", "multiple_boys",
    "1other", "2others", "3others", "4others", "5others", "6+others", "multiple_others",
    "male_focus",
)


class AttachedTags(_Strict):
    """Percentile tags from a numeric column of `kdata db attach` (e.g. an aesthetic score),
    ruled exactly like quality: a post gets the best band whose threshold (a 'linear' quantile
    of the column over the DB's posts, per rating, per (rating, year) cohort or over all) its
    value is strictly above."""

    column: str
    percentiles: tuple[float, ...] = (90, 70, 40, 15)
    # One more band than percentiles, best first; "" is a band that adds no tag (the middle).
    bands: tuple[str, ...] = ("very aesthetic", "aesthetic", "", "displeasing", "very displeasing")
    # "rating_year": a (rating, year) group with at least cohort_min_posts values has thresholds
    # of its own, other posts use their rating's (as quality_cohort does).
    cohort: Literal["rating", "rating_year", "all"] = "rating"
    cohort_min_posts: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _bands_match(self) -> "AttachedTags":
        problems = _band_problems(self.percentiles, self.bands, "percentiles", "bands")
        if problems:
            raise problems_error(problems)
        return self


def _band_problems(percentiles: tuple[float, ...], bands: tuple[str, ...], p_key: str,
                   b_key: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(key, sentence, keys involved) for percentile bands that cannot work."""
    problems = []
    if len(bands) != len(percentiles) + 1:
        problems.append((b_key, f"needs exactly one more name than {p_key} ({len(percentiles)} given, "
                                f"{len(bands)} names)", (b_key, p_key)))
    if list(percentiles) != sorted(percentiles, reverse=True) or any(not 0 <= p <= 100 for p in percentiles):
        problems.append((p_key, f"must go from high to low within 0..100 (given {list(percentiles)})", (p_key,)))
    return problems


# Caption variants (kohaku_data/captions/variants.py): caption groups by name, and the shipped
# group orders. `count` = the kept count tags (1girl…), `copyright` = series, `attached` = the
# bands of `attached_tags`; NoobAI's <special> is quality/year/rating/attached, its <other> meta.
CAPTION_GROUPS = ("count", "character", "copyright", "artist", "general", "meta", "year", "rating", "quality",
                  "attached")
ORDER_PRESETS: dict[str, tuple[str, ...]] = {
    "noobai": ("count", "character", "copyright", "artist", "quality", "year", "rating", "attached", "general", "meta"),
    "animagine4": ("count", "character", "copyright", "rating", "general", "meta", "year", "quality", "attached"),
    "anima": ("quality", "attached", "meta", "year", "rating", "count", "character", "copyright", "artist", "general"),
}


class CaptionVariant(_Strict):
    """One caption variant stored in every sample's json (`captions.<name>`, its token count in
    `caption_tokens.<name>`); keys documented in pipelines/README.md."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: Literal["kohaku", "ordered", "xml", "text", "mixed"]
    order: str | tuple[str, ...] = "noobai"  # a preset of ORDER_PRESETS or group names (ordered, xml, mixed)
    artist_prefix: str = ""  # "@" as Anima writes artists
    rating: bool = True  # leave the rating / quality / year words out with false
    quality: bool = True
    year: bool = True
    empty_groups: Literal["drop", "keep", "half"] = "drop"  # xml: `<g></g>` for empty groups; half: per post
    text_field: str = ""  # text, mixed: the `text_fields` column; "" = the first of them
    mix: Literal["tags_then_text", "text_then_tags"] = "tags_then_text"  # mixed
    max_tokens: int | None = Field(None, ge=1)  # budget: trims the rest, whole tags (text: whole sentences)

    def groups(self) -> tuple[str, ...]:
        """The group order, without the groups this variant leaves out."""
        order = ORDER_PRESETS.get(self.order, ()) if isinstance(self.order, str) else self.order
        off = {g for g, on in (("rating", self.rating), ("quality", self.quality), ("year", self.year)) if not on}
        return tuple(g for g in order if g not in off)

    @model_validator(mode="after")
    def _known(self) -> "CaptionVariant":
        if isinstance(self.order, str) and self.order not in ORDER_PRESETS:
            raise ValueError(f"variant {self.name}: unknown order preset {self.order!r}; known: {', '.join(ORDER_PRESETS)}")
        unknown = [g for g in self.groups() if g not in CAPTION_GROUPS]
        if unknown or len(set(self.groups())) != len(self.groups()):
            raise ValueError(f"variant {self.name}: order needs distinct groups of {', '.join(CAPTION_GROUPS)}")
        return self


class CaptionVariants(_Strict):
    """`[caption.variants]`: which variants every sample stores and which one is the `.txt`.
    `kohaku` (today's caption) is always stored; `add` more, or list `kohaku` to give it a budget."""

    txt: str = "kohaku"
    tokenizer: str = "clip"  # "clip" (bundled, exact) or the path of a tokenizer.json
    add: tuple[CaptionVariant, ...] = ()

    def all(self) -> tuple[CaptionVariant, ...]:
        """Every stored variant, kohaku first."""
        if any(v.name == "kohaku" for v in self.add):
            return tuple(sorted(self.add, key=lambda v: v.name != "kohaku"))
        return (CaptionVariant(name="kohaku", kind="kohaku"), *self.add)

    @property
    def needs_groups(self) -> bool:
        """Whether any variant is made from the caption groups (not only today's caption)."""
        return any(v.kind in ("ordered", "xml", "mixed") or v.max_tokens for v in self.all())

    @model_validator(mode="after")
    def _consistent(self) -> "CaptionVariants":
        names = [v.name for v in self.all()]
        if len(set(names)) != len(names):
            raise ValueError("caption.variants: variant names must be distinct")
        if any(v.name == "kohaku" and v.kind != "kohaku" for v in self.add):
            raise ValueError("caption.variants: the name kohaku is the kohaku variant's")
        if self.txt not in names:
            raise ValueError(f"caption.variants.txt = {self.txt!r} names no variant ({', '.join(names)})")
        return self


class CaptionConfig(_Strict):
    """Caption rules; see kohaku_data/captions/__init__.py for the format and an example."""

    rating_tags: dict[str, str] = {
        "general": "safe", "sensitive": "sensitive",
        "questionable": "nsfw", "explicit": "explicit, nsfw",
    }
    # Quality: a post gets the best band whose threshold its metric is strictly above.
    # Thresholds are numpy/polars 'linear' quantiles of the metric over the DB's posts.
    quality: bool = True
    quality_metric: Literal["fav_count", "score"] = "fav_count"
    quality_percentiles: tuple[float, ...] = (95, 85, 75, 50, 25, 10)
    quality_bands: tuple[str, ...] = QUALITY_BANDS  # len = len(percentiles) + 1, best first
    quality_cohort: Literal["rating", "rating_year"] = "rating"
    cohort_min_posts: int = Field(1000, ge=1)  # a (rating, year) group smaller than this uses its rating's
    # YYYY-MM-DD: posts whose written date is after it get no quality tag (and do not count
    # in the thresholds: their favourites are still growing).
    quality_cutoff_date: str | None = None
    # Year tags
    year: bool = True
    year_mode: Literal["bins", "percentile"] = "bins"
    year_tags: tuple[str, ...] = YEAR_TAGS  # new to old
    # first year of each tag but the last, new to old: 2021+ newest, 2018 recent, 2015 mid, 2011 early
    year_bins: tuple[int, ...] = (2021, 2018, 2015, 2011)
    # percentile mode: the first date of each tag but the last is this quantile of creation dates
    year_percentiles: tuple[float, ...] = (80, 60, 40, 20)
    year_min: int = 2005  # dates before this year are broken (Danbooru opened in 2005): no year tag
    rating: bool = True
    # Layout
    keep_tags: tuple[str, ...] = COUNT_TAGS  # general tags moved to the kept part
    keep_separator: str | None = "|||"
    tag_order: Literal["popularity", "db", "alpha", "shuffle"] = "popularity"
    shuffle_seed: int = 0
    underscore_to_space: bool = True  # only names longer than 3 characters
    escape_parens: bool = False
    blacklist: tuple[str, ...] = ()
    drop_meta_containing: tuple[str, ...] = NON_VISUAL_META
    drop_artist_containing: tuple[str, ...] = ("banned",)
    separator: str = ", "
    # Tag cleanup (kohaku_data/curation/tagrules.py); all off by default
    resolve_aliases: bool = False  # alias names (kdata_tag_alias) become the tag they name
    drop_implied: bool = False  # drop a tag another tag of the post implies (transitively)
    min_general_posts: int = Field(0, ge=0)  # leave out general tags on fewer posts than this
    year_number: bool = False  # also `year 2021` right after the period tag (NoobAI, Animagine 4)
    year_number_prefix: str = "year "
    # Imported per-post data (`kdata db attach`, kohaku_data/curation/attached.py)
    attached_tags: tuple[AttachedTags, ...] = ()  # percentile tags, after the quality tag
    text_fields: tuple[str, ...] = ()  # text columns kept apart in the json (`texts`)
    # What the .txt holds: the tag caption, the first text field a post has (else its tags), or both
    caption_mode: Literal["tags", "text", "tags_then_text"] = "tags"
    text_joiner: str = "\n"  # between the tags and the text in tags_then_text
    variants: CaptionVariants = CaptionVariants()  # stored caption variants, the .txt one, budgets
    hash_omit_default: ClassVar[frozenset[str]] = frozenset({"variants"})

    @property
    def wants_tag_rules(self) -> bool:
        """Aliases, implications or the general-tag floor: kohaku_data/curation/tagrules.py."""
        return bool(self.resolve_aliases or self.drop_implied or self.min_general_posts > 0)

    @property
    def uses_curation(self) -> bool:
        """Whether captions need kohaku_data/curation (tag rules, attached data, text fields)."""
        return bool(self.wants_tag_rules or self.attached_tags or self.text_fields or self.caption_mode != "tags")

    @property
    def needs_relation_ids(self) -> bool:
        """`tag_order = "db"` orders tags by posttagrelation id: pages must read the ids too."""
        return self.tag_order == "db"

    @model_validator(mode="after")
    def _variant_texts(self) -> "CaptionConfig":
        needs = [v.name for v in self.variants.add if v.kind in ("text", "mixed")
                 and (not self.text_fields or (v.text_field and v.text_field not in self.text_fields))]
        if needs:
            raise ValueError(f"variants {', '.join(needs)} need their text_field among caption.text_fields")
        return self

    @model_validator(mode="after")
    def _bands_match(self) -> "CaptionConfig":
        """Checked by mode: only the keys the chosen modes use (a 3-tag `bins` recipe need not
        fix `year_percentiles`, which only percentile mode reads)."""
        problems = []
        if self.quality:
            problems += _band_problems(self.quality_percentiles, self.quality_bands,
                                       "quality_percentiles", "quality_bands")
        if self.year:
            key = "year_bins" if self.year_mode == "bins" else "year_percentiles"
            edges = self.year_bins if self.year_mode == "bins" else self.year_percentiles
            if len(edges) != len(self.year_tags) - 1:
                problems.append((key, f"needs exactly one value fewer than year_tags in year_mode = "
                                      f"\"{self.year_mode}\" ({len(self.year_tags)} tags, {len(edges)} values)",
                                 (key, "year_tags", "year_mode")))
            if list(edges) != sorted(edges, reverse=True):
                problems.append((key, f"must go from new to old, high to low (given {list(edges)})", (key,)))
            if self.year_mode == "percentile" and any(not 0 <= p <= 100 for p in edges):
                problems.append((key, "percentiles must lie in 0..100", (key,)))
            if self.year_mode == "bins" and edges and edges[-1] <= self.year_min:
                problems.append((key, f"must all be after year_min ({self.year_min})", (key, "year_min")))
        if self.quality_cutoff_date is not None and not _is_date(self.quality_cutoff_date):
            problems.append(("quality_cutoff_date", "must be a date YYYY-MM-DD", ("quality_cutoff_date",)))
        if self.caption_mode != "tags" and not self.text_fields:
            problems.append(("caption_mode", f"\"{self.caption_mode}\" needs text_fields (the attached text "
                                             "columns to use); without them every caption is tags only",
                             ("caption_mode", "text_fields")))
        if problems:
            raise problems_error(problems)
        return self


def _is_date(text: str) -> bool:
    import datetime

    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return len(text) == 10


# --------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------
_FILE_NAME_PART = r"^[A-Za-z0-9][A-Za-z0-9._+-]*$"  # name/version end up in file and folder names


class Recipe(_Strict):
    """What one dataset version is; every key is documented in pipelines/README.md."""

    name: str = Field("default", pattern=_FILE_NAME_PART)
    version: str = Field("0", pattern=_FILE_NAME_PART)
    description: str = ""
    query: str = ""  # Danbooru search syntax; empty = every post that has a file
    image: ImageConfig = ImageConfig()
    caption: CaptionConfig = CaptionConfig()
    # A shard is closed before a sample would take it past this size (a lone bigger sample
    # still gets a shard of its own).
    shard_max_bytes: int = Field(1_000_000_000, ge=10_240)
    shard_max_samples: int | None = Field(None, ge=1)
    # md5 of the bytes vs post.md5, checked when the file's size equals post.file_size (then it
    # claims to be the original); a re-encoded or resized copy (other size) is not checked.
    check_md5: bool = True
    dedup: "DedupConfig" = Field(default_factory=lambda: DedupConfig())
    weights: "WeightConfig" = Field(default_factory=lambda: WeightConfig())
    artifacts: "ArtifactRules" = Field(default_factory=lambda: ArtifactRules())

    @property
    def dataset_name(self) -> str:
        return f"{self.name}-{self.version}"

    # added after 1b90f5b's layout (hash_form leaves them out while default)
    hash_omit_default: ClassVar[frozenset[str]] = frozenset({"artifacts"})

    def canonical_json(self) -> str:
        """Stable text of the recipe, defaults included except keys added later that hold their
        default (`hash_omit_default`): what the hash records (the lock keeps the full dump)."""
        return json.dumps(hash_form(self), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


class DedupConfig(_Strict):
    """Duplicates (kohaku_data/curation/dedup.py): `exact` = same md5 or same decoded pixels;
    `near` = also a perceptual hash within `threshold` bits (64-bit hash; the threshold comes
    from benchmarks/bench_dedup.py). Each group keeps one post; the others are rejects
    `duplicate` with the kept key in the detail."""

    policy: Literal["off", "exact", "near"] = "off"
    threshold: int = Field(8, ge=0, le=32)  # Hamming distance in bits, `near` only (bench_dedup: best F1)
    family_threshold: int | None = Field(None, ge=0, le=32)  # parent/child posts: this looser one
    # A wider phash distance for pairs whose 64-cell colour histograms also agree (L1 <=
    # colour_distance): finds crops and watermarks the phash alone misses; the search radius,
    # and its cost, grow with it (bench_dedup: both rules' precision/recall)
    colour_threshold: int | None = Field(None, ge=0, le=32)
    colour_distance: float = Field(0.3, ge=0, le=2)
    keep: Literal["fav_count", "score"] = "fav_count"  # highest, then most pixels, then lowest id


class ArtifactRules(_Strict):
    """Rules on the source artifact measures (kohaku_data/images/artifacts; applied by
    kohaku_data/curation/artifacts.py as the shards are laid out). Each is off (None / False)
    by default; the defaults of the thresholds come from benchmarks/bench_artifacts.py.
    A reject carries its reason (`jpeg_quality`, `jpeg_history`, `upscaled`) and the measured
    value in its detail; a tag is added (Danbooru's own name) only when the post lacks it."""

    reject_jpeg_quality_below: int | None = Field(None, ge=1, le=100)  # JPEG source, IJG quality < this
    reject_jpeg_history: bool = False  # lossless source with jpeg_history >= history_threshold
    reject_upscaled_above: float | None = Field(None, ge=1.0)  # measured upscale_factor >= this
    tag_jpeg_quality_below: int | None = Field(None, ge=1, le=100)  # adds `jpeg_artifacts`
    tag_jpeg_history: bool = False  # adds `jpeg_artifacts` to a lossless source once a JPEG
    tag_upscaled_above: float | None = Field(None, ge=1.0)  # adds `upscaled`
    history_threshold: float = Field(0.3, gt=0, le=1)  # jpeg_history evidence that counts
    # a lossless source's past JPEG counts for the quality rules too (its estimated quality)
    history_quality: bool = True


class WeightConfig(_Strict):
    """Repeat-factor sample weights (LVIS): r(c) = max(1, sqrt(threshold / f(c))) with f(c) the
    share of samples carrying tag c; a sample's weight is the max over its tags of `categories`
    (1.0 when it has none). Empty `categories`: no weights (every weight 1.0)."""

    categories: tuple[Literal["artist", "character", "copyright", "general", "meta"], ...] = ()
    threshold: float = Field(0.001, gt=0, le=1)


Recipe.model_rebuild()


def load_recipe(path: Path | None) -> Recipe:
    """Read a recipe file, or a shipped recipe by name (`demo`, `kohaku-xl-gamma`: the
    `pipelines/*.toml` installed as `kohaku_data.recipes`); `None` gives the default recipe."""
    if path is None:
        return Recipe()
    path = _recipe_file(Path(path))
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}; fix that line") from None
    return validate_recipe(data, text, str(path))


def validate_recipe(data: dict, text: str = "", source: str = "the recipe") -> Recipe:
    """The recipe of `data` (a parsed TOML document whose text is `text`), or a `RecipeError`
    listing every problem, each at its key's line, with a did-you-mean."""
    try:
        return Recipe.model_validate(data)
    except ValidationError:
        raise RecipeError(source, find_problems(Recipe, data, text)) from None


def shipped_recipes() -> dict[str, Path]:
    """The recipes installed with kdata, by name."""
    import importlib.resources

    folder = Path(str(importlib.resources.files("kohaku_data.recipes")))
    return {p.stem: p for p in sorted(folder.glob("*.toml"))}


def _recipe_file(path: Path) -> Path:
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = path.name.removesuffix(".toml")
    if path.parent in (Path("."), Path("pipelines")) and name in shipped:
        return shipped[name]
    raise ConfigError(
        f"recipe {path} does not exist: give a recipe file, or one of the shipped recipes by name "
        f"({', '.join(shipped)})"
    )
