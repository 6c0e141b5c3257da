"""The shipped recipes (`NAME.toml`), installed as `kohaku_data.recipes`: `--recipe NAME` finds them
when no file of that name exists (see `kohaku_data.config.load_recipe`)."""
