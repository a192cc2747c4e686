"""cellsae.images."""
