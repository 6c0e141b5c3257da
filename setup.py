"""Everything about the package is in pyproject.toml; this file only maps two top-level folders
into the wheel, which pyproject's `packages.find` cannot express:

- `migrations/` → `kohaku_data.migrations` (the one source of the schema migrations),
- `pipelines/`  → `kohaku_data.recipes` (the shipped recipes a user may start from).
"""

from setuptools import find_packages, setup

MAPPED = {"kohaku_data.migrations": "migrations", "kohaku_data.recipes": "pipelines"}

setup(
    packages=find_packages(include=["kohaku_data", "kohaku_data.*"]) + list(MAPPED),
    package_dir=MAPPED,
)
