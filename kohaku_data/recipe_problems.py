"""Recipe problems as sentences: what is wrong, where (file and line), and what was probably meant.

pydantic finds the problems; this module only words them, generically, from the models
themselves, so a key or section another module adds to `config.Recipe` is covered with no
change here:

- an unknown key gets a did-you-mean from the fields of the model it was written into;
- a `Literal[...]` value, or a value a validator refuses with `choice_error`, gets a
  did-you-mean from the allowed values;
- cross-field checks (a model validator) raise `problems_error` with one (key, sentence) per
  problem, so every problem of a table is listed, each at its own key's line.

Lines come from a cheap scan of the TOML text (table headers and `key =` lines), not from a
second parser: good for every recipe kdata ships and documents.

Problems are found in rounds: pydantic skips a model's cross-field checks while one of its
fields is invalid, so the invalid values are dropped (the defaults stand in) and the rest is
validated again, keeping only problems that do not involve a dropped key.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

Path_ = tuple[str | int, ...]
_ROUNDS = 4  # re-validations with the invalid values dropped (each round only finds new problems)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe: `key` dotted (`image.bucket`), `line` 1-based or None."""

    key: str
    message: str  # a sentence without its location
    line: int | None = None

    def sentence(self, source: str = "") -> str:
        where = f"{source} line {self.line}" if source and self.line else (source or "")
        if not where and self.line:
            where = f"line {self.line}"
        return f"{where}: {self.message}" if where else self.message


def choice_error(what: str, value: Any, allowed: typing.Iterable[str]) -> PydanticCustomError:
    """A value that must be one of `allowed` (a preset name, say); raise it from a validator."""
    allowed = list(allowed)
    return PydanticCustomError(
        "unknown_choice", "unknown {what} {value!r}; known: {known}",
        {"what": what, "value": value, "allowed": allowed, "known": ", ".join(allowed)},
    )


def problems_error(problems: list[tuple[str, str, tuple[str, ...]]]) -> PydanticCustomError:
    """Several cross-field problems of one model at once: (key, sentence, every key involved)."""
    return PydanticCustomError("recipe_problems", "{text}",
                               {"text": "; ".join(p[1] for p in problems), "problems": problems})


def find_problems(model: type[BaseModel], data: dict[str, Any], text: str = "") -> list[Problem]:
    """Every problem of `data` as `model` sees it, in file order; [] when it validates."""
    found: list[Problem] = []
    seen: set[tuple[str, str]] = set()
    dropped: set[Path_] = set()
    data = copy.deepcopy(data)
    for _ in range(_ROUNDS):
        try:
            model.model_validate(data)
            break
        except ValidationError as exc:
            new = _round(model, data, exc.errors(), dropped)
        fresh = [(p, path) for p, path in new if (p.key, p.message) not in seen]
        if not fresh:
            break
        for problem, path in fresh:
            seen.add((problem.key, problem.message))
            found.append(Problem(problem.key, problem.message, find_line(text, path)))
            field = _field_of(model, path)
            if _drop(data, path) or _drop(data, field):
                dropped.add(path)
    return sorted(found, key=lambda p: (p.line is None, p.line or 0, p.key))


def _round(model: type[BaseModel], data: dict, errors: list[dict], dropped: set[Path_]) -> list[tuple[Problem, Path_]]:
    out = []
    for group in _grouped(model, errors).values():
        for path, message, involved in _messages(model, data, group):
            if any(_under(d, path[:-1] + (k,)) for d in dropped for k in involved):
                continue  # a consequence of a value already reported (and dropped)
            out.append((Problem(_dotted(path), message), path))
    return out


def _under(dropped: Path_, path: Path_) -> bool:
    return path[:len(dropped)] == dropped


def _grouped(model: type[BaseModel], errors: list[dict]) -> dict[Path_, list[tuple[dict, Path_, str | None]]]:
    """Errors by the field they are about (union member tags taken out of the location)."""
    groups: dict[Path_, list[tuple[dict, Path_, str | None]]] = {}
    for error in errors:
        path, tag, union_field = _clean_loc(model, tuple(error["loc"]))
        groups.setdefault(union_field or _field_of(model, path), []).append((error, path, tag))
    return groups


def _messages(model: type[BaseModel], data: dict, group: list[tuple[dict, Path_, str | None]]):
    """(path, sentence, keys involved) for one field's errors; a union's branch errors merged."""
    tags = {tag for _, _, tag in group if tag is not None}
    if len(tags) > 1:  # `str | Preset`: keep the errors of the branch the value was meant for
        meant = [g for g in group if not g[0]["type"].endswith("_type")]
        if not meant:
            error, path, _ = group[0]
            field = _field_of(model, path)
            expected = " or ".join(sorted({g[0]["msg"].removeprefix("Input should be ") for g in group}))
            yield field, f"{_dotted(field)} = {_show(error['input'])} has the wrong type: it should be {expected}", ()
            return
        group = meant
    for error, path, _ in group:
        yield from _message(model, error, path)


def _message(model: type[BaseModel], error: dict, path: Path_):
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "recipe_problems":
        for key, sentence, involved in ctx["problems"]:
            yield path + (key,), f"{_dotted(path + (key,))}: {sentence}", tuple(involved)
        return
    if kind == "extra_forbidden":
        owner = _annotation_at(model, path[:-1])
        known = list(owner.model_fields) if _is_model(owner) else []
        yield path, f"unknown key {_dotted(path)}{_did_you_mean(str(path[-1]), known, listing='known keys here')}", ()
        return
    if kind in ("literal_error", "unknown_choice", "enum"):
        allowed = ctx.get("allowed") or _literal_values(_annotation_at(model, path))
        what = f"a known {ctx['what']}" if "what" in ctx else "allowed"
        hint = _did_you_mean(str(error["input"]), [str(a) for a in allowed], listing="allowed")
        yield path, f"{_dotted(path)} = {_show(error['input'])} is not {what}{hint}", ()
        return
    if kind == "missing":
        yield path, f"{_dotted(path)} is required", ()
        return
    msg = error["msg"].removeprefix("Value error, ")
    yield path, f"{_dotted(path)} = {_show(error['input'])}: {msg[:1].lower() + msg[1:]}", ()


def _did_you_mean(word: str, candidates: list[str], *, listing: str) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    close = close or sorted(c for c in candidates if word and c.startswith(word))[:1]  # `pop` → popularity
    if not close:  # `sdxl1024` vs `sdxl-1024`: compare without separators and case too
        squash = {re.sub(r"[\W_]", "", c).lower(): c for c in candidates}
        hit = difflib.get_close_matches(re.sub(r"[\W_]", "", word).lower(), list(squash), n=1, cutoff=0.6)
        close = [squash[hit[0]]] if hit else []
    if close:
        return f"; did you mean {close[0]!r}?"
    return f" ({listing}: {', '.join(candidates)})" if candidates else ""


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- walking the models --------------------------------------------------------------------------
def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return ()


def _step(annotation: Any, part: str | int) -> tuple[Any, bool]:
    """The annotation one location part further in, and whether `part` was a union member tag."""
    if _is_model(annotation):
        fields = annotation.model_fields
        return (fields[part].annotation if part in fields else None), False
    members = _members(annotation)
    if members and isinstance(part, str):
        for member in members:
            name = getattr(member, "__name__", None) or str(member)
            if name == part or str(member) == part:
                return member, True
        return None, True
    args = typing.get_args(annotation)
    if isinstance(part, int) and args:
        return args[0], False  # tuple[X, ...] / list[X]
    if isinstance(part, str) and typing.get_origin(annotation) is dict and len(args) == 2:
        return args[1], False
    return None, False


def _clean_loc(model: type[BaseModel], loc: Path_) -> tuple[Path_, str | None, Path_ | None]:
    """The location without union member tags (`image.bucket.BucketPreset.step` → `image.bucket.step`),
    the (first) tag, and the path of the union field it belongs to."""
    annotation: Any = model
    path: list[str | int] = []
    tag, union_field = None, None
    for part in loc:
        annotation, was_tag = _step(annotation, part) if annotation is not None else (None, False)
        if was_tag and tag is None:
            tag, union_field = str(part), tuple(path)
        elif not was_tag:
            path.append(part)
    return tuple(path), tag, union_field


def _annotation_at(model: type[BaseModel], path: Path_) -> Any:
    annotation: Any = model
    for part in path:
        if annotation is None:
            return None
        annotation, was_tag = _step(annotation, part)
        while annotation is not None and _members(annotation) and not was_tag:
            models = [m for m in _members(annotation) if _is_model(m)]
            if not models:
                break
            annotation = models[0]  # a key inside `str | Model` is a key of the model
    return annotation


def _field_of(model: type[BaseModel], path: Path_) -> Path_:
    """The path up to the last named field (list indices and dict keys below it left out)."""
    annotation: Any = model
    end = 0
    for i, part in enumerate(path):
        owner = annotation
        annotation, _ = _step(annotation, part) if annotation is not None else (None, False)
        if _is_model(owner) or (_members(owner) and any(_is_model(m) for m in _members(owner))):
            end = i + 1
        models = [m for m in _members(annotation) if _is_model(m)] if annotation is not None else []
        if models:
            annotation = models[0]
    return path[:max(end, 1)]


def _literal_values(annotation: Any) -> list[Any]:
    if annotation is None:
        return []
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [v for arg in typing.get_args(annotation) for v in _literal_values(arg)]


def _drop(data: dict, path: Path_) -> bool:
    """Remove the value at `path` (the field's default stands in next round)."""
    node: Any = data
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path and path[-1] in node:
        del node[path[-1]]
        return True
    return False


# -- lines ---------------------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


def find_line(text: str, path: Path_) -> int | None:
    """The line that sets `path` (or the nearest enclosing key or table): a scan of headers and
    `key =` lines, ignoring list indices. None when nothing matches (e.g. a default value)."""
    want = tuple(p for p in path if isinstance(p, str))
    best, best_len = None, 0
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            table = _split_key(header.group(1))
            full = table
        else:
            key = _KEY.match(line)
            if not key:
                continue
            full = table + _split_key(key.group(1))
        depth = len(full)
        if depth > best_len and want[:depth] == full:
            best, best_len = number, depth
    return best
