"""AnnData-in / AnnData-out analysis, following scanpy's conventions.

Each module appends its public names below (one import line per module).
"""
