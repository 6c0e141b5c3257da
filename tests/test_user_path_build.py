"""A user's path through recipes and builds with no dead ends: recipe problems stop the build
up front (one sentence each, exit 2), an unusable build exits non-zero, every summary names its
next step, and a damaged dataset is repaired to its original bytes. Real sqlite files, real
images, `kdata` run in a subprocess."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from kohaku_data.config import CaptionConfig, RecipeError, validate_recipe
from kohaku_data.recipe_problems import find_line
from test_build_support import Inputs, folder_bytes, make_inputs

RECIPE = 'name = "t"\nversion = "1"\nshard_max_bytes = 400000\n[image]\nbucket = "demo-256"\n'


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    return make_inputs(tmp_path_factory.mktemp("inputs"))


def kdata(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`kdata ARGS` in a real process; an escaped exception fails the test here."""
    proc = subprocess.run([sys.executable, "-c", "from kohaku_data.cli import app; app()", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def recipe_file(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as caught:
        validate_recipe(tomllib.loads(text), text, "r.toml")
    return [p.sentence("r.toml") for p in caught.value.problems]


# -- recipe validation ---------------------------------------------------------------------------
def test_every_problem_is_one_sentence_with_its_line_and_a_did_you_mean():
    text = ('nme = "x"\n[image]\nbucket = "sdxl1024"\ncodec = "webp_fast"\nalpha = "kep"\n'
            '[caption]\ntag_order = "pop"\n[dedup]\ntreshold = 3\n[weights]\ncategories = ["artst"]\n')
    found = problems(text)
    assert found == [
        "r.toml line 1: unknown key nme; did you mean 'name'?",
        "r.toml line 3: image.bucket = \"sdxl1024\" is not a known bucket preset; did you mean 'sdxl-1024'?",
        "r.toml line 4: image.codec = \"webp_fast\" is not a known codec preset; did you mean 'webp-fast'?",
        "r.toml line 5: image.alpha = \"kep\" is not allowed; did you mean 'keep'?",
        "r.toml line 7: caption.tag_order = \"pop\" is not allowed; did you mean 'popularity'?",
        "r.toml line 9: unknown key dedup.treshold; did you mean 'threshold'?",
        "r.toml line 11: weights.categories[0] = \"artst\" is not allowed; did you mean 'artist'?",
    ]


def test_the_message_is_no_pydantic_dump():
    with pytest.raises(RecipeError) as caught:
        validate_recipe({"image": {"bucket": {"stepp": 3}}, "shard_max_bytes": 5}, "", "r.toml")
    message = str(caught.value)
    assert "validation error" not in message and "type=" not in message and "errors.pydantic.dev" not in message
    assert "unknown key image.bucket.stepp; did you mean 'step'?" in message
    assert "shard_max_bytes = 5: input should be greater than or equal to 10240" in message
    assert message.startswith("recipe r.toml has 2 problems; nothing was built:")


def test_year_keys_are_checked_by_mode():
    two_bins = '[caption]\nyear_tags = ["new", "old"]\nyear_bins = [2018]\n'
    assert validate_recipe(tomllib.loads(two_bins)).caption.year_tags == ("new", "old")  # year_percentiles unused
    # year_percentiles is not in the file (its default is too long): the [caption] header's line
    percentile = '[caption]\nyear_mode = "percentile"\nyear_tags = ["new", "old"]\nyear_bins = [2018]\n'
    assert problems(percentile) == [
        'r.toml line 1: caption.year_percentiles: needs exactly one value fewer than year_tags in '
        'year_mode = "percentile" (2 tags, 4 values)']
    assert CaptionConfig(year=False, year_tags=("a",)).year is False  # no year tag: nothing to check


def test_cross_field_problems_show_beside_field_errors():
    """pydantic skips a table's cross-field check while a field is invalid: all are listed anyway."""
    text = '[caption]\ntag_order = "pop"\nquality_bands = ["a"]\n'
    found = problems(text)
    assert len(found) == 2 and "line 2: caption.tag_order" in found[0]
    assert found[1].startswith("r.toml line 3: caption.quality_bands: needs exactly one more name")


def test_lines_are_found_for_tables_inline_tables_and_dotted_keys():
    text = 'name = "a"\n[image]\nbucket = { step = 3 }\n[caption]\nimage.x = 1\n'
    assert find_line(text, ("image", "bucket", "step")) == 3
    assert find_line(text, ("caption",)) == 4
    assert find_line(text, ("name",)) == 1
    assert find_line(text, ("query",)) is None


def test_an_unknown_preset_given_on_the_command_line_still_gets_a_did_you_mean():
    from kohaku_data.config import ConfigError, ImageConfig

    with pytest.raises(ConfigError, match="unknown bucket preset 'sdxl1024'; did you mean 'sdxl-1024'"):
        ImageConfig().model_copy(update={"bucket": "sdxl1024"}).bucket_preset()


def _live_posts(inputs) -> list[int]:
    with sqlite3.connect(inputs.db) as conn:
        live = [pid for (pid,) in conn.execute("SELECT id FROM post WHERE is_deleted IS NOT 1 ORDER BY id")]
    conn.close()
    return live


# -- builds --------------------------------------------------------------------------------------
def test_a_recipe_typo_stops_the_build_before_any_image(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE.replace("demo-256", "sdxl1024") + 'codec = "webp_fast"\n')
    out = tmp_path / "out"
    proc = kdata("build", "--src", str(inputs.src), "--db", str(inputs.db), "--recipe", str(recipe),
                 "--out", str(out), "--workers", "1", "--no-progress")
    assert proc.returncode == 2
    assert f"{recipe} line 5: image.bucket = \"sdxl1024\" is not a known bucket preset; did you mean 'sdxl-1024'?" \
        in proc.stderr
    assert "image.codec = \"webp_fast\"" in proc.stderr and "did you mean 'webp-fast'" in proc.stderr
    assert not out.exists()


def test_recipe_check_and_dry_run_say_what_the_build_will_do(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE)
    proc = kdata("recipe", "check", str(recipe), "--db", str(inputs.db), "--src", str(inputs.src))
    assert proc.returncode == 0, proc.stderr
    live = _live_posts(inputs)  # deleted posts are not selected, as `kdata query ""` hides them
    files = len([k for k in live if k != inputs.hard["no_file"]])
    assert len(live) < len(inputs.ids), "the sample should have deleted posts"
    assert f"posts selected: {len(live)}" in proc.stdout and f"files to process: {files}" in proc.stdout
    assert "file_without_post: 1 — " in proc.stdout
    assert "too_small: 1 — images smaller than their bucket" in proc.stdout  # the 40x30 file, from DB sizes
    assert "shards: about" in proc.stdout
    out = tmp_path / "dry"
    dry = kdata("build", "--dry-run", "--src", str(inputs.src), "--db", str(inputs.db), "--recipe", str(recipe),
                "--out", str(out))
    assert dry.returncode == 0 and f"posts selected: {len(live)}" in dry.stdout and "nothing was built" in dry.stdout
    assert not out.exists()
    bad = kdata("recipe", "check", str(recipe_file(tmp_path, "nme = 1\n", "bad.toml")))
    assert bad.returncode == 2 and "unknown key nme; did you mean 'name'?" in bad.stderr


def test_a_build_with_no_samples_fails_and_names_the_fix(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE.replace("demo-256", "sdxl-1024"))  # every image is too small
    proc = kdata("build", "--src", str(inputs.src), "--db", str(inputs.db), "--recipe", str(recipe),
                 "--out", str(tmp_path / "empty"), "--workers", "1", "--no-progress")
    assert proc.returncode == 1
    assert "0 samples" in proc.stdout
    decodable = [k for k in _live_posts(inputs) if k not in inputs.hard.values()]
    assert f'too_small: {len(decodable) + 1} — images smaller than their bucket; use a smaller bucket preset (image.bucket) or ' \
           'image.too_small = "native"' in proc.stdout
    assert "the build made 0 samples" in proc.stderr


def test_an_internal_error_fails_the_build_and_its_traceback_is_logged(inputs, tmp_path):
    # A zero bucket step is a division by zero inside the stage: an unexpected exception, as a bug is.
    recipe = recipe_file(tmp_path, 'name = "t"\nversion = "1"\n[image]\nbucket = {name = "z", step = 0}\n')
    out = tmp_path / "bug"
    proc = kdata("build", "--src", str(inputs.src), "--db", str(inputs.db), "--recipe", str(recipe),
                 "--out", str(out), "--workers", "1", "--no-progress")
    assert proc.returncode == 1
    log = out / "internal_error.log"
    assert f"the first traceback is in {log}" in proc.stderr.replace("\n", " ")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text


def test_damaged_shards_are_repaired_to_their_original_bytes(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE)
    out = tmp_path / "ds"
    args = ["--src", str(inputs.src), "--db", str(inputs.db), "--out", str(out), "--workers", "1", "--no-progress"]
    first = kdata("build", "--recipe", str(recipe), *args)
    assert first.returncode == 0 and f"next: kdata verify {out}" in first.stdout
    original = folder_bytes(out)
    tars = sorted(out.glob("t-*.tar"))
    assert len(tars) >= 4
    for tar in tars[1:3]:  # same size, other bytes: only a hash finds it
        data = bytearray(tar.read_bytes())
        data[1500] ^= 0xFF
        tar.write_bytes(bytes(data))
    tars[3].unlink()
    verify = kdata("verify", str(out))
    assert verify.returncode == 1
    repair_cmd = f"kdata build --repair --out {out} --src SRC --db DB"
    assert repair_cmd in " ".join(verify.stderr.split())
    fixed = kdata("build", "--repair", *args)  # the recipe comes from the dataset's lock
    assert fixed.returncode == 0, fixed.stderr
    assert f"repaired 3 shard(s): {tars[1].name}, {tars[2].name}, {tars[3].name}" in fixed.stdout
    assert kdata("verify", str(out)).returncode == 0
    assert folder_bytes(out) == original


def test_a_plain_rerun_rewrites_a_missing_shard(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE)
    out = tmp_path / "ds"
    args = ["--src", str(inputs.src), "--db", str(inputs.db), "--recipe", str(recipe), "--out", str(out),
            "--workers", "1", "--no-progress"]
    assert kdata("build", *args).returncode == 0
    original = folder_bytes(out)
    (out / "t-000000.tar").unlink()
    rerun = kdata("build", *args)
    assert rerun.returncode == 0 and "repaired 1 shard(s): t-000000.tar" in rerun.stdout
    assert folder_bytes(out) == original


def test_ctrl_c_says_the_rerun_resumes(inputs, tmp_path):
    recipe = recipe_file(tmp_path, RECIPE)
    out = tmp_path / "ds"
    cmd = [sys.executable, "-c", "from kohaku_data.cli import app; app()", "build", "--src", str(inputs.src),
           "--db", str(inputs.db), "--recipe", str(recipe), "--out", str(out), "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not (out / ".staging").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the build finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert "interrupted: rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert kdata(*cmd[3:]).returncode == 0
