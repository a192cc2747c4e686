"""A self-contained HTML report: sections of text, figures (inlined PNG), tables and
key figures, with every user-provided string escaped. No network, no JavaScript."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import atomic_write_text

logger = logging.getLogger(__name__)

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#18324f;color:#fff;padding:22px 40px}
header h1{margin:0 0 6px 0;font-size:26px} header p{margin:0;opacity:.85}
nav{background:#fff;border-bottom:1px solid #dde2e8;padding:10px 40px;position:sticky;top:0;z-index:2}
nav a{margin-right:14px;color:#18324f;text-decoration:none;font-size:14px;white-space:nowrap}
main{padding:10px 40px 60px 40px;max-width:1250px}
section{background:#fff;border:1px solid #e1e5ea;border-radius:8px;padding:18px 24px;margin:18px 0}
section h2{margin-top:0;font-size:20px;color:#18324f}
.figure{margin:14px 0;display:inline-block;vertical-align:top;max-width:100%}
.figure img{max-width:100%;border:1px solid #eef0f3}
.caption{font-size:13px;color:#555;max-width:760px;margin-top:4px}
table{border-collapse:collapse;font-size:13px;margin:10px 0}
th,td{border-bottom:1px solid #e6e9ee;padding:4px 10px;text-align:right}
th{background:#f0f3f7;text-align:center} td:first-child,th:first-child{text-align:left}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:8px 0}
.kpi{background:#f3f6fa;border-radius:6px;padding:8px 14px;min-width:120px}
.kpi .v{font-size:20px;font-weight:600;color:#18324f} .kpi .k{font-size:12px;color:#556}
.warn{background:#fff6e0;border-left:4px solid #e0a800;padding:8px 12px;margin:8px 0;font-size:14px}
.note{font-size:14px;line-height:1.5;max-width:900px}
.pass{color:#1a7f37;font-weight:600} .fail{color:#b42318;font-weight:600}
footer{color:#778;font-size:12px;padding:0 40px 30px 40px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "–"
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def figure_to_png(fig, dpi: int = 110) -> bytes:
    """Render a matplotlib Figure to PNG bytes (and close it)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass
class _Section:
    id: str
    title: str
    blocks: list[str] = field(default_factory=list)


class Report:
    """Collect sections, figures and tables; write one self-contained HTML file.

    Figures passed to :meth:`figure` are also saved as PNG (and SVG when ``svg=True``)
    under ``figure_dir`` when one is given.
    """

    def __init__(self, title: str, *, subtitle: str = "", figure_dir: str | Path | None = None,
                 svg: bool = False):
        self.title = title
        self.subtitle = subtitle
        self.sections: list[_Section] = []
        self.figure_dir = Path(figure_dir) if figure_dir else None
        self.svg = svg
        self._n_fig = 0

    def section(self, title: str, *, id: str | None = None) -> Report:
        sid = id or "s" + "".join(ch if ch.isalnum() else "-" for ch in title.lower())[:40]
        self.sections.append(_Section(sid, title))
        return self

    def _current(self) -> _Section:
        if not self.sections:
            self.section("Overview")
        return self.sections[-1]

    def text(self, text: str) -> Report:
        paragraphs = [p.strip() for p in str(text).split("\n\n") if p.strip()]
        self._current().blocks.extend(f'<p class="note">{_esc(p)}</p>' for p in paragraphs)
        return self

    def warning(self, text: str) -> Report:
        self._current().blocks.append(f'<div class="warn">{_esc(text)}</div>')
        return self

    def kpis(self, values: dict[str, Any]) -> Report:
        items = "".join(f'<div class="kpi"><div class="v">{_esc(_fmt(v))}</div>'
                        f'<div class="k">{_esc(k)}</div></div>' for k, v in values.items())
        self._current().blocks.append(f'<div class="kpis">{items}</div>')
        return self

    def figure(self, fig, caption: str = "", *, name: str | None = None, dpi: int = 110,
               width: int | None = None) -> Report:
        """Add a matplotlib Figure (or PNG bytes)."""
        self._n_fig += 1
        name = name or f"figure_{self._n_fig:02d}"
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        if isinstance(fig, bytes):
            png = fig
        else:
            if self.figure_dir is not None and self.svg:
                self.figure_dir.mkdir(parents=True, exist_ok=True)
                fig.savefig(self.figure_dir / f"{safe}.svg", bbox_inches="tight")
            png = figure_to_png(fig, dpi=dpi)
        if self.figure_dir is not None:
            self.figure_dir.mkdir(parents=True, exist_ok=True)
            (self.figure_dir / f"{safe}.png").write_bytes(png)
        data = base64.b64encode(png).decode("ascii")
        style = f' style="max-width:{int(width)}px"' if width else ""
        self._current().blocks.append(
            f'<div class="figure"><img alt="{_esc(caption or name)}" src="data:image/png;base64,'
            f'{data}"{style}><div class="caption">{_esc(caption)}</div></div>')
        return self

    def table(self, df: pd.DataFrame | dict, caption: str = "", *, max_rows: int = 40,
              index: bool = True) -> Report:
        if isinstance(df, dict):
            df = pd.DataFrame({"value": pd.Series(df)})
        df = df.head(max_rows)
        head = ([_esc(df.index.name or "")] if index else []) + [_esc(c) for c in df.columns]
        rows = []
        for idx, row in df.iterrows():
            cells = ([f"<td>{_esc(idx)}</td>"] if index else []) + \
                [f"<td>{_esc(_fmt(v))}</td>" for v in row.to_numpy()]
            rows.append("<tr>" + "".join(cells) + "</tr>")
        cap = f'<div class="caption">{_esc(caption)}</div>' if caption else ""
        self._current().blocks.append(
            "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>" + cap)
        return self

    def checks(self, rows: list[tuple[str, Any, str, bool | None]], caption: str = "") -> Report:
        """A table of (what, measured, target, passed) rows for scoring against truth."""
        body = []
        for what, value, target, ok in rows:
            mark = "" if ok is None else ('<span class="pass">pass</span>' if ok
                                          else '<span class="fail">below target</span>')
            body.append(f"<tr><td>{_esc(what)}</td><td>{_esc(_fmt(value))}</td>"
                        f"<td>{_esc(target)}</td><td>{mark}</td></tr>")
        cap = f'<div class="caption">{_esc(caption)}</div>' if caption else ""
        self._current().blocks.append(
            "<table><thead><tr><th>check</th><th>measured</th><th>target</th><th></th></tr>"
            "</thead><tbody>" + "".join(body) + "</tbody></table>" + cap)
        return self

    def to_html(self) -> str:
        nav = "".join(f'<a href="#{_esc(s.id)}">{_esc(s.title)}</a>' for s in self.sections)
        body = "".join(f'<section id="{_esc(s.id)}"><h2>{_esc(s.title)}</h2>{"".join(s.blocks)}'
                       f"</section>" for s in self.sections)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        from .. import __version__

        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f"<title>{_esc(self.title)}</title><style>{_CSS}</style></head><body>"
                f"<header><h1>{_esc(self.title)}</h1><p>{_esc(self.subtitle)}</p></header>"
                f"<nav>{nav}</nav><main>{body}</main>"
                f"<footer>cellsae {_esc(__version__)} · generated {stamp}</footer></body></html>")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_html())
        logger.info("report written to %s", path)
        return path
