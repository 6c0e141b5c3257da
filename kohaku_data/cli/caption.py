"""`kdata caption` and `kdata caption stats`."""

import typer

app = typer.Typer(help="Captions from the DB: quality/year/rating tags in Kohaku-XL layout.")
