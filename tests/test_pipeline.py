from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from cellsae.config import ConfigError
from cellsae.pipeline import Pipeline, load_pipeline_config


def tiny_config(out: Path, **overrides) -> dict:
    cfg = {
        "run": {"out": str(out), "seed": 0, "title": "tiny <run>"},
        "world": {"enabled": True, "n_cells": 160, "plates": True, "plate_cells": 24},
        "ingest": {"settings": {"crop_size": 64, "n_workers": 0}},
        "embed": {"encoder": {"arch": "resnet", "widths": [8, 16], "blocks": [1, 1]},
                  "train": {"epochs": 1, "batch_size": 32}},
        "sae": {"arch": "topk", "d_sae": 64, "k": 4, "n_epochs": 4, "batch_size": 32},
        "analyze": {"n_bootstrap": 20},
        "align": {"settings": {"n_neighbors": 10, "epsilon": 0.01}, "n_permutations": 2},
        "pathways": {"settings": {"n_top_genes": 60}},
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    cfg = load_pipeline_config(tiny_config(out))
    status = Pipeline(cfg).run()
    return out, cfg, status


def test_runs_end_to_end(finished_run):
    out, _, status = finished_run
    assert all(v == "ran" for v in status.values()), status
    for stage in status:
        manifest = json.loads((out / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["outputs"]
    assert (out / "report" / "outputs" / "report.html").exists()
    latents = ad.read_h5ad(out / "analyze" / "outputs" / "latents.h5ad")
    assert latents.n_obs == 160 and "X_umap" in latents.obsm
    assert not list(out.glob(".*.tmp"))


def test_rerun_skips_finished_stages(finished_run):
    out, cfg, _ = finished_run
    status = Pipeline(cfg).run()
    assert set(status.values()) == {"skipped"}


def test_changed_parameter_reruns_that_stage_and_downstream(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    cfg = load_pipeline_config(tiny_config(copy, **{"analyze.n_neighbors": 10}))
    status = Pipeline(cfg).run()
    assert status["sae"] == "skipped" and status["embed"] == "skipped"
    assert status["analyze"] == "ran" and status["align"] == "ran" and status["report"] == "ran"


def test_interrupted_run_resumes_to_same_outputs(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for stage in ("analyze", "align", "pathways", "report"):
        shutil.rmtree(copy / stage)
    pipe = Pipeline(load_pipeline_config(tiny_config(copy)))
    original = {s.name: s.fn for s in pipe.stages}

    def crash(ctx):
        (ctx.out / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    for s in pipe.stages:
        if s.name == "analyze":
            s.fn = crash
    with pytest.raises(KeyboardInterrupt):
        pipe.run()
    assert not (copy / "analyze").exists()
    assert not list(copy.glob(".*.tmp"))
    for s in pipe.stages:
        s.fn = original[s.name]
    status = pipe.run(stages=["world", "ingest", "embed", "sae", "analyze"])
    assert status["sae"] == "skipped" and status["analyze"] == "ran"
    a = ad.read_h5ad(out / "analyze" / "outputs" / "latents.h5ad")
    b = ad.read_h5ad(copy / "analyze" / "outputs" / "latents.h5ad")
    np.testing.assert_allclose(a.obsm["X_sae"], b.obsm["X_sae"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.obs["leiden"].to_numpy(), b.obs["leiden"].to_numpy())


def test_failed_rerun_keeps_previous_outputs(finished_run, tmp_path):
    out, _, _ = finished_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    before = (copy / "pathways" / "manifest.json").read_text()
    pipe = Pipeline(load_pipeline_config(tiny_config(copy)))
    for s in pipe.stages:
        if s.name == "pathways":
            s.fn = lambda ctx: (_ for _ in ()).throw(RuntimeError("disk full"))
    with pytest.raises(RuntimeError, match="disk full"):
        pipe.run(from_stage="pathways")
    assert (copy / "pathways" / "manifest.json").read_text() == before


@pytest.mark.parametrize("overrides, match", [
    ({"sae.d_sae": -3}, "sae.d_sae"),
    ({"sae.dsae": 10}, "sae.dsae: unknown field"),
    ({"world.design": "shuffled"}, "world.design"),
])
def test_bad_config_fails_before_work(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_pipeline_config(tiny_config(tmp_path / "run", **overrides))
    assert not (tmp_path / "run").exists()


def test_missing_inputs_are_reported_together(tmp_path):
    cfg = {"run": {"out": str(tmp_path / "r")}, "inputs": {"rna": str(tmp_path / "nope.h5ad")}}
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(cfg)
    assert "inputs.rna" in str(err.value) and "no image input" in str(err.value)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_a_real_browser(finished_run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (.ci/run installs it)")
    out, _, _ = finished_run
    report = out / "report" / "outputs" / "report.html"
    html = report.read_text()
    for title in ("Run summary", "Data and quality control", "Encoder", "Sparse autoencoder",
                  "Latents as expression", "Differential features", "Geometric fidelity",
                  "GW-map", "Pathway hierarchy", "Scored against the truth"):
        assert title in html, title
    assert "tiny &lt;run&gt;" in html and "tiny <run>" not in html
    assert "could not be drawn" not in html
    shot = tmp_path / "shot.png"
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000",
         "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<section") >= 10
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,4000",
         f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.stat().st_size > 20_000
    # no broken images: every inlined PNG decodes
    import base64
    import re

    from PIL import Image  # matplotlib depends on pillow

    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 8
    for data in images:
        import io

        Image.open(io.BytesIO(base64.b64decode(data))).verify()


@pytest.mark.parametrize("name", ["demo.yaml", "real_plates.yaml", "own_embeddings.yaml"])
def test_example_configs_are_valid(name):
    from cellsae.config import load_yaml, validate_config
    from cellsae.pipeline import PipelineConfig

    root = Path(__file__).resolve().parents[1]
    cfg = validate_config(PipelineConfig, load_yaml(root / "examples" / name), source=name)
    assert cfg.run.out
