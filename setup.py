"""Everything about the package is in pyproject.toml; this file only maps two top-level folders
into the wheel, which pyproject's `packages.find` cannot express:

- `migrations/` → `kohaku_data.migrations` (the one source of the schema migrations),
- `pipelines/`  → `kohaku_data.recipes` (the shipped recipes a user may start from).

Data-only folders inside the package (`resources/`, `service/static/`) have no `__init__.py`:
namespace discovery lists them as packages, so setuptools ships their files (package-data in
pyproject.toml) without its "Package would be ignored" warning, ~40 lines each per install.
"""

from setuptools import find_namespace_packages, setup

MAPPED = {"kohaku_data.migrations": "migrations", "kohaku_data.recipes": "pipelines"}

setup(
    packages=find_namespace_packages(include=["kohaku_data", "kohaku_data.*"], exclude=["*.__pycache__"])
    + list(MAPPED),
    package_dir=MAPPED,
)
