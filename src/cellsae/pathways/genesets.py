"""Gene sets in the GMT format: read, write, validate.

A GMT file has one gene set per line, tab-separated: the set's name, a description (often a
URL or ``NA``), then one gene per field. No gene-set database ships with cellsae (nothing is
downloaded); users pass their own GMT file, e.g. from MSigDB, GO or Reactome.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from .._utils import atomic_write_text, require_file

__all__ = ["GMTError", "read_gmt", "write_gmt", "validate_gene_sets"]


class GMTError(ValueError):
    """A GMT file or gene-set mapping is malformed (bad line, duplicate or empty set)."""


def read_gmt(path: str | os.PathLike, *, min_size: int = 1) -> dict[str, list[str]]:
    """Read a GMT file into ``{set name: [genes]}``, in file order.

    Parameters
    ----------
    path
        The GMT file. Blank lines and lines starting with ``#`` are skipped.
    min_size
        Sets with fewer distinct genes than this are an error (a set of 0 genes is always
        an error: it is almost always a file with spaces where tabs should be).

    Returns
    -------
    dict mapping each set name to its genes (duplicates within a set removed, order kept).
    The description field is dropped; use :func:`read_gmt_descriptions` if you need it.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    GMTError
        A line has fewer than three tab-separated fields, an empty set name, or a set name
        that appeared on an earlier line; the message gives the line number.
    """
    sets, _ = _parse_gmt(path, min_size=min_size)
    return sets


def read_gmt_descriptions(path: str | os.PathLike) -> dict[str, str]:
    """The description (second) field of each set in a GMT file."""
    _, descriptions = _parse_gmt(path, min_size=1)
    return descriptions


def _parse_gmt(path, *, min_size: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    path = require_file(path, what="GMT file")
    sets: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                hint = (" (the line has spaces but no tabs: GMT fields must be separated by tabs)"
                        if "\t" not in line and " " in line.strip() else "")
                raise GMTError(
                    f"{path}:{number}: malformed GMT line: expected 'name<TAB>description<TAB>"
                    f"gene1<TAB>gene2...', found {len(fields)} tab-separated field(s){hint}"
                )
            name = fields[0].strip()
            if not name:
                raise GMTError(f"{path}:{number}: malformed GMT line: the gene-set name is empty")
            if name in sets:
                raise GMTError(
                    f"{path}:{number}: duplicate gene-set name {name!r} (first defined on line "
                    f"{first_line[name]}); gene-set names must be unique: rename or merge them"
                )
            genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
            if len(genes) < max(1, min_size):
                raise GMTError(
                    f"{path}:{number}: gene set {name!r} has {len(genes)} gene(s), fewer than "
                    f"min_size={max(1, min_size)}"
                )
            sets[name] = genes
            descriptions[name] = fields[1].strip()
            first_line[name] = number
    if not sets:
        raise GMTError(f"GMT file '{path}' contains no gene sets")
    return sets, descriptions


def validate_gene_sets(gene_sets: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]
                       ) -> dict[str, list[str]]:
    """Check an in-memory gene-set collection and return it as ``{name: [genes]}``.

    Accepts a mapping or an iterable of ``(name, genes)`` pairs (the latter lets duplicate
    names be detected). Names must be non-empty strings without tabs or newlines, unique,
    and each set must contain at least one gene.
    """
    items = gene_sets.items() if isinstance(gene_sets, Mapping) else gene_sets
    out: dict[str, list[str]] = {}
    for name, genes in items:
        if not isinstance(name, str) or not name.strip():
            raise GMTError(f"gene-set names must be non-empty strings, got {name!r}")
        if any(ch in name for ch in "\t\n\r"):
            raise GMTError(f"gene-set name {name!r} contains a tab or newline")
        if name in out:
            raise GMTError(f"duplicate gene-set name {name!r}; gene-set names must be unique")
        if isinstance(genes, str):
            raise GMTError(f"gene set {name!r}: expected a list of genes, got the string {genes!r}")
        genes = list(dict.fromkeys(str(g) for g in genes))
        if not genes:
            raise GMTError(f"gene set {name!r} is empty")
        bad = [g for g in genes if not g.strip() or any(ch in g for ch in "\t\n\r")]
        if bad:
            raise GMTError(f"gene set {name!r} has invalid gene name(s) {bad[:3]!r}")
        out[name] = genes
    return out


def write_gmt(gene_sets: Mapping[str, Iterable[str]], path: str | os.PathLike, *,
              descriptions: Mapping[str, str] | None = None) -> Path:
    """Write ``{set name: genes}`` to a GMT file atomically (nothing is left on error).

    Parameters
    ----------
    gene_sets
        Mapping of set name to genes; validated with :func:`validate_gene_sets`.
    path
        Destination file.
    descriptions
        Optional description per set; ``"NA"`` where missing.
    """
    sets = validate_gene_sets(gene_sets)
    descriptions = dict(descriptions or {})
    lines = []
    for name, genes in sets.items():
        desc = str(descriptions.get(name, "NA")).replace("\t", " ").replace("\n", " ") or "NA"
        lines.append("\t".join([name, desc, *genes]))
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
