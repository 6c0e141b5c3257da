"""`kdata db init|info|import|migrate`."""

import typer

app = typer.Typer(help="Create, inspect, import into and migrate a Danbooru2023 sqlite.", no_args_is_help=True)
