"""The `sca` command line: a thin typer layer over the stages (see `stages/`)."""
