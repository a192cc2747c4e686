"""GW-map accuracy on public paired data (shared/data) and on the synthetic world.

For each data set the (k, ε) grid is solved with cellsae's entropic GW and one coupling
is chosen WITHOUT labels by the consensus criterion (``cellsae.align.select_gw``). For
comparison the same grid is also scored with the truth: ``*_label_tuned`` is the best
FOSCTTM any grid point reaches (what SCOT reports), ``*_objective_pick`` the FOSCTTM of
the lowest-GW-objective candidate. FOSCTTM follows SCOT: source cells are projected
barycentrically into the target representation.

    python benchmarks/gw_alignment.py [--quick] [--out FILE] [--data DIR]

Last line printed: one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import emit  # benchmarks/_common.py, beside this script

REPO = Path(__file__).resolve().parents[1]


def _score(name, x, y, src_labels, tgt_labels, ks, epss, *, metric="correlation",
           mode="connectivity", truth=None, eval_rep=None):
    from cellsae.align import select_gw
    from cellsae.metrics.alignment import foscttm

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = select_gw(x, y, n_neighbors=ks, epsilons=epss, metric=metric, mode=mode,
                        keep_candidates=True, device="cpu")
    rep = y if eval_rep is None else eval_rep
    truth = np.arange(x.shape[0]) if truth is None else truth
    cands = [c for c in res.selection["candidates"] if "failed" not in c]
    fos = [foscttm(r.barycentric_projection(rep), rep[truth])
           for r in res.selection["_results"]]
    lts = [r.label_transfer_accuracy(src_labels, tgt_labels)
           for r in res.selection["_results"]]
    chosen = int(np.argmin([c["consensus_disagreement"] for c in cands]))
    by_obj = int(np.argmin([c["objective"] for c in cands]))
    best = int(np.argmin(fos))
    out = {
        f"{name}_foscttm": fos[chosen],
        f"{name}_label_transfer": lts[chosen],
        f"{name}_chosen_k": cands[chosen]["n_neighbors"],
        f"{name}_chosen_epsilon": cands[chosen]["epsilon"],
        f"{name}_foscttm_label_tuned": fos[best],
        f"{name}_label_transfer_label_tuned": lts[best],
        f"{name}_foscttm_objective_pick": fos[by_obj],
        f"{name}_n_candidates": len(cands),
        f"{name}_seconds": time.perf_counter() - t0,
    }
    logging.info("%s: %s", name, {k: round(v, 4) if isinstance(v, float) else v
                                  for k, v in out.items()})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grids, skip SNARE-seq (<60 s)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler, normalize

    from cellsae.datasets.paired import load_gouwens2020, load_scgem, load_snareseq

    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"quick": bool(args.quick)}
    t_all = time.perf_counter()
    quick = args.quick
    if not args.data.exists():
        print(f"reference data not found at {args.data}; see shared/data/README.md",
              file=sys.stderr)
        return 2
    # scGEM: methylation -> expression, SCOT preprocessing (L2-normalised cells)
    d = load_scgem(args.data)
    figures.update(_score("scgem", normalize(d.source), normalize(d.target), d.source_labels,
                          d.target_labels, (20, 30) if quick else (20, 30, 50),
                          (5e-3, 1e-2) if quick else (2e-3, 5e-3, 1e-2)))
    # Gouwens 2020: morphology (z-scored) / ephys -> RNA (PCA-30); 5(6) subclasses
    for modality in ("morph",) if quick else ("morph", "ephys"):
        d = load_gouwens2020(args.data, modality=modality)
        x = StandardScaler().fit_transform(d.source)
        x = x[:, np.isfinite(x).all(0)]
        y = PCA(30, random_state=0).fit_transform(d.target)
        ks = (15, 30) if quick else (15, 30, 50)
        epss = (1e-2,) if quick else (2e-3, 5e-3, 1e-2)
        figures.update(_score(f"gouwens_{modality}", x, y, d.source_labels, d.target_labels,
                              ks, epss))
    if not quick:
        d = load_snareseq(args.data)
        figures.update(_score("snare", normalize(d.source), normalize(d.target),
                              d.source_labels, d.target_labels, (30, 70, 110),
                              (1e-3, 3e-3, 1e-2)))
    # synthetic world: true visual factors stand in for image features (no SAE here)
    try:
        from cellsae.datasets import neuron_world
        from cellsae.tl.align import rna_representation
    except ImportError as err:  # pragma: no cover
        logging.warning("synthetic world unavailable: %s", err)
    else:
        n = 200 if quick else 1000
        w = neuron_world(n, seed=0, crop_size=32)
        x = StandardScaler().fit_transform(np.asarray(w.cells.obsm["factors"]))
        y = rna_representation(w.rna, n_pcs=30)
        pairing = np.asarray(w.cells.obs["rna_index"]).astype(int)
        figures.update(_score("synthetic", x, y, w.cells.obs["genotype"].astype(str).to_numpy(),
                              w.rna.obs["genotype"].astype(str).to_numpy(),
                              (15, 30) if quick else (15, 30, 50),
                              (1e-2,) if quick else (2e-3, 5e-3, 1e-2),
                              metric="euclidean", truth=pairing))
    figures["seconds_total"] = time.perf_counter() - t_all
    figures["selection_criterion"] = "consensus (label-free)"
    emit(figures, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
