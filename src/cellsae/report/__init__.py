"""HTML report assembly: one self-contained page with every figure and table."""

from .html import Report, figure_to_png

__all__ = ["Report", "figure_to_png"]
