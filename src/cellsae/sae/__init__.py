"""cellsae.sae."""
