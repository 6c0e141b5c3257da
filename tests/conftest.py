"""Shared fixtures: real sqlite files made from the published DDL."""

from __future__ import annotations

from pathlib import Path

import pytest

from kohaku_data.db import DanbooruDB

DATA = Path(__file__).parent / "data"


@pytest.fixture
def empty_db(tmp_path: Path) -> DanbooruDB:
    """A fresh file with exactly the published schema."""
    db = DanbooruDB.create(tmp_path / "danbooru.db")
    yield db
    db.close()


@pytest.fixture
def posts_sample_path() -> Path:
    """10 real posts as Danbooru's posts.json returns them."""
    return DATA / "danbooru-posts-sample.json"
