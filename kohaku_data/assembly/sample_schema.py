"""The one fixed schema of a sample's `<key>.json`, and the 🤗 `datasets` header that declares it.

Readers that infer types from the first few samples (🤗 `datasets`' webdataset builder looks at
five) fail on a later sample as soon as an early one has a null where a later one has a value,
or an empty list where a later one has strings. So every `.json` has every key of `JSON_FIELDS`,
always of its type, and never a null:

- strings are `""` when there is nothing (no quality tag, no year tag, no md5, rating off);
- `score` and `fav_count` are 0 when the DB has none (the published schema makes both NOT NULL,
  so only a hand-edited DB gets the sentinel);
- tag lists are lists of strings, possibly empty; `bucket`, `crop_box`, `original_size` are
  lists of ints (w, h / left, top, right, bottom / w, h of the source).

Even so an all-empty first list infers as `list<null>`; `hf_features()` / the README header give
🤗 the types up front, so `load_dataset` needs no guessing at all.

    datasets.load_dataset("webdataset", data_files=..., features=datasets.Features.from_dict(hf_features()))
"""

from __future__ import annotations

from typing import Any

TAG_CATEGORIES = ("general", "artist", "character", "copyright", "meta")
# Image members: `webp`, or `png` where WebP cannot hold the image; a sample has exactly one.
IMAGE_COLUMNS = ("webp", "png")

# name -> type: "int64", "string", "list:int64", "list:string", or a dict (a struct).
JSON_FIELDS: dict[str, Any] = {
    "id": "int64",
    "bucket": "list:int64",
    "crop_box": "list:int64",
    "original_size": "list:int64",
    "source": "string",
    "source_format": "string",
    "rating": "string",
    "rating_tag": "string",
    "score": "int64",
    "fav_count": "int64",
    "created_at": "string",
    "quality": "string",
    "year_tag": "string",
    "md5": "string",
    "tags": {cat: "list:string" for cat in TAG_CATEGORIES},
    "caption": "string",
    # kohaku_data/curation: the tag caption (`caption` is what the .txt holds, by caption_mode),
    # the recipe's text fields (names and values, same order; "" = the post has none) and the
    # tags of its attached numeric columns
    "tag_caption": "string",
    "text_fields": "list:string",
    "texts": "list:string",
    "attached_tags": "list:string",
    # the recipe's caption variants (captions/variants.py): name → text and name → CLIP tokens,
    # the same names in every sample of a build (`kohaku` always; `json_fields(names)`)
    "captions": {"kohaku": "string"},
    "caption_tokens": {"kohaku": "int64"},
    # the source's artifact measures (kohaku_data/images/artifacts.FIELDS, documented there;
    # written here so readers need not import the image stage): -1 / -1.0 / "" when unknown or
    # not applicable, booleans as 1 / 0
    "artifacts": {
        "jpeg_quality": "int64", "jpeg_tables": "string", "jpeg_subsampling": "string", "jpeg_progressive": "int64",
        "jpeg_history": "float64", "jpeg_history_quality": "int64", "webp_lossy": "int64", "webp_quality": "int64",
        "upscale_factor": "float64", "upscale_kind": "string", "upscale_cliff": "float64",
        "effective_width": "int64", "effective_height": "int64", "colours": "int64", "dither": "float64",
    },
}
MISSING_INT = 0  # score / fav_count when the DB has none (documented above)
DEFAULT_VARIANTS = ("kohaku",)


def json_fields(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> dict[str, Any]:
    """The json schema of a build whose recipe stores `variants` (names, kohaku first)."""
    return {**JSON_FIELDS, "captions": {v: "string" for v in variants}, "caption_tokens": {v: "int64" for v in variants}}


def variants_of(recipe: dict[str, Any] | None) -> tuple[str, ...]:
    """Variant names of a recipe as the lock records it (a dict), kohaku first."""
    added = [v["name"] for v in ((recipe or {}).get("caption", {}).get("variants", {}).get("add", []))]
    return ("kohaku", *(n for n in added if n != "kohaku"))


# -- making a conforming object ---------------------------------------------------------------------
def conform(values: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """`values` cast to the schema (default: that of the variants `values` names): every key
    present, None → "" / 0 / [] (unknown keys dropped)."""
    if spec is None:
        spec = json_fields(tuple(values.get("captions") or DEFAULT_VARIANTS))
    return {name: _cast(values.get(name), kind) for name, kind in spec.items()}


def _cast(value: Any, kind: Any) -> Any:
    if isinstance(kind, dict):
        return conform(value or {}, kind)
    if kind == "int64":
        return MISSING_INT if value is None else int(value)
    if kind == "string":
        return "" if value is None else str(value)
    if kind == "float64":
        return -1.0 if value is None else float(value)
    item = kind.split(":", 1)[1]
    return [_cast(v, item) for v in (value or [])]


def schema_problems(obj: Any, spec: dict[str, Any] | None = None, where: str = "") -> list[str]:
    """What is wrong with a parsed `.json` (missing or extra keys, wrong types); [] when it conforms
    (default schema: that of the variant names its `captions` holds)."""
    if spec is None:
        names = tuple(obj["captions"]) if isinstance(obj, dict) and isinstance(obj.get("captions"), dict) else ()
        spec = json_fields(names or DEFAULT_VARIANTS)
    if not isinstance(obj, dict):
        return [f"{where or 'the json'} is not an object"]
    problems = [f"{where}{k} is missing" for k in spec if k not in obj]
    problems += [f"{where}{k} is not in the schema" for k in obj if k not in spec]
    for name, kind in spec.items():
        if name in obj and not _fits(obj[name], kind):
            problems += (schema_problems(obj[name], kind, f"{where}{name}.") if isinstance(kind, dict)
                         else [f"{where}{name} is not {kind}"])
    return problems


def _fits(value: Any, kind: Any) -> bool:
    if isinstance(kind, dict):
        return isinstance(value, dict) and not schema_problems(value, kind)
    if kind == "int64":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "float64":
        return isinstance(value, float)
    item = kind.split(":", 1)[1]
    return isinstance(value, list) and all(_fits(v, item) for v in value)


# -- 🤗 datasets features ----------------------------------------------------------------------------
def hf_features(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> dict[str, Any]:
    """The columns 🤗's webdataset builder makes of a kdata shard, in `Features.to_dict()` form
    (`datasets.Features.from_dict(hf_features())`): `__key__`, `__url__`, the image (`webp` or
    `png`, the other one None), `txt` (the caption) and `json`."""
    columns: dict[str, Any] = {"__key__": _value("string"), "__url__": _value("string")}
    columns.update({ext: {"_type": "Image"} for ext in IMAGE_COLUMNS})
    columns["txt"] = _value("string")
    columns["json"] = _feature_dict(json_fields(variants))
    return columns


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


def _feature_dict(kind: Any) -> Any:
    if isinstance(kind, dict):
        return {name: _feature_dict(sub) for name, sub in kind.items()}
    if kind.startswith("list:"):
        return {"feature": _value(kind.split(":", 1)[1]), "_type": "List"}
    return _value(kind)


def hf_features_yaml(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> list[dict[str, Any]]:
    """The same columns in the YAML list form of a dataset card (`dataset_info.features`)."""
    columns: list[dict[str, Any]] = [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"}]
    columns += [{"name": ext, "dtype": "image"} for ext in IMAGE_COLUMNS]
    columns.append({"name": "txt", "dtype": "string"})
    columns.append({"name": "json", "struct": _yaml_struct(json_fields(variants))})
    return columns


def _yaml_struct(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, kind in spec.items():
        if isinstance(kind, dict):
            out.append({"name": name, "struct": _yaml_struct(kind)})
        elif kind.startswith("list:"):
            out.append({"name": name, "list": kind.split(":", 1)[1]})
        else:
            out.append({"name": name, "dtype": kind})
    return out


def shard_glob(index: dict[str, Any]) -> str:
    """The data_files pattern of a dataset's shards (every `NAME-NNNNNN.tar` of index.json)."""
    return f"{index['name']}-*.tar"


def hf_yaml_header(index: dict[str, Any], variants: tuple[str, ...] = DEFAULT_VARIANTS) -> str:
    """The YAML front matter of the dataset card (`---` … `---\\n`): one `default` config whose
    train split is the shards of `index` (index.json), and the features above. Written by hand
    (no YAML library needed), deterministic, parsed back by the tests with PyYAML and 🤗."""
    shards = index.get("shardlist", [])
    return card_header(shard_glob(index), hf_features_yaml(variants), sum(int(s["nsamples"]) for s in shards),
                       sum(int(s["filesize"]) for s in shards))


def hf_parquet_features_yaml(variants: tuple[str, ...] = DEFAULT_VARIANTS) -> list[dict[str, Any]]:
    """The columns of `kdata export --format hf` parquet files: key, image, caption, one
    `caption_<variant>` per caption variant, json."""
    return [{"name": "key", "dtype": "int64"}, {"name": "image", "dtype": "image"},
            {"name": "caption", "dtype": "string"}, *({"name": f"caption_{v}", "dtype": "string"} for v in variants),
            {"name": "json", "struct": _yaml_struct(json_fields(variants))}]


def card_header(path_pattern: str, features: list[dict[str, Any]], nsamples: int, nbytes: int) -> str:
    """Front matter with one `default` config (train split = `path_pattern`) and `features`."""
    lines = ["---", "configs:", "- config_name: default", "  data_files:", "  - split: train",
             f"    path: {_quote(path_pattern)}", "dataset_info:", "  config_name: default", "  features:"]
    lines += _yaml_lines(features, "  ")
    lines += ["  splits:", "  - name: train", f"    num_examples: {nsamples}", f"    num_bytes: {nbytes}",
              f"  download_size: {nbytes}", "---", ""]
    return "\n".join(lines)


def strip_header(card: str) -> str:
    """A card's text without its YAML front matter (to put another header on it)."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            return card[end + 5:]
    return card


def _yaml_lines(items: list[dict[str, Any]], indent: str) -> list[str]:
    lines: list[str] = []
    for item in items:
        lines.append(f"{indent}- name: {_quote(item['name'])}")
        for key in ("dtype", "list"):
            if key in item:
                lines.append(f"{indent}  {key}: {item[key]}")
        if "struct" in item:
            lines.append(f"{indent}  struct:")
            lines += _yaml_lines(item["struct"], indent + "  ")
    return lines


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def readme_with_header(index: dict[str, Any], body: str = "") -> str:
    """A minimal card: the header and `body` (fallback writer for when no card module exists)."""
    return hf_yaml_header(index) + body
