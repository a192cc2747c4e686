"""Plotting with matplotlib; each function returns the Figure (or Axes) it drew.

Each module appends its public names below (one import line per module).
"""
