from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cellsae.report import Report  # noqa: E402


def test_report_escapes_user_strings_and_inlines_images(tmp_path):
    r = Report("Run <script>alert(1)</script>", figure_dir=tmp_path / "figs")
    r.section("Genes & <b>modules</b>")
    r.text("a gene named <script>x</script>")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    r.figure(fig, "caption <i>")
    r.table(pd.DataFrame({"gene": ["<script>"], "score": [0.5]}))
    r.kpis({"<k>": 1.0})
    r.checks([("FOSCTTM", 0.1, "≤ 0.13", True)])
    out = r.write(tmp_path / "report.html")
    text = out.read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "data:image/png;base64," in text and "http" not in text.replace("http-equiv", "")
    assert (tmp_path / "figs" / "figure_01.png").exists()
