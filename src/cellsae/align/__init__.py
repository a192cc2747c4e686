"""cellsae.align."""
