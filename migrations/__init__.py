"""kdata's schema migrations (`NNNN_name.py`), shipped in the wheel as `kohaku_data.migrations`.

The files are loaded by path in number order by `kohaku_data.db.migrate`, never imported by name
(their names start with digits); this file only makes the folder a package that setuptools maps.
"""
