"""Shared tail of every benchmark: print the figures as one JSON line, optionally to a file."""

from __future__ import annotations

import json
from pathlib import Path


def emit(figures: dict, out: Path | None) -> str:
    """Print ``figures`` as the last output line (one JSON object); also write it to ``out``."""
    line = json.dumps(figures)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(line + "\n")
    print(line)
    return line
