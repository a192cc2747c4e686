"""Synthetic worlds with known truth, and loaders for public reference data.

Each module appends its public names below (one import line per module).
"""
