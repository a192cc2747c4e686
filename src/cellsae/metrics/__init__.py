"""Pure metric functions: arrays in, numbers out. No AnnData here.

Each module appends its public names below (one import line per module).
"""
