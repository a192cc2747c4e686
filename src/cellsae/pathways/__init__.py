"""cellsae.pathways."""
