"""The `medserve` command line (assembled in `serving.cli.main`): one module per command group."""
