"""cellsae.report."""
