"""cellsae.embed."""
