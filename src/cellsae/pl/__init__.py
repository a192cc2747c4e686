"""Plotting with matplotlib; each function returns the Figure (or Axes) it drew.

Each module appends its public names below (one import line per module).
"""
from .crops import composite, crops_gallery
from .pathways import module_tree
from .latents import volcano, latent_gallery, comparison_plot
from .align import coupling_heatmap, gw_confusion, gw_joint_embedding, gw_predictability
