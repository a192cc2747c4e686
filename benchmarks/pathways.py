"""Gene-module hierarchy recovery on the synthetic neuron world's planted 3 ⊃ 7 ⊃ 17 modules.

What is measured (all in this process, on one world):

0. Worlds: ``neuron_world(n_cells=2000, seed=s)`` for each seed (``--seeds``; 0 in
   ``--quick``, 0,1,2 otherwise); accuracy figures are means over seeds, with ``_min``
   and per-seed ``_seedN`` keys.
1. True RNA: ``world.rna`` raw counts, normalised to 10,000 per cell + log1p. The genes
   clustered are the world's ~200 module genes, standing in for the paper's "200
   predictable genes" (the list a GW-map predictability test would hand over); the
   background genes are not clustered, so ARI is over exactly the clustered genes.
   ``--hvg N`` adds a run on the N most variable genes instead (module and background
   genes); its ARI is over the module genes among them, background genes excluded.
2. ``cellsae.pathways.find_hierarchy`` with the levels chosen automatically (no
   resolutions or module counts given). For each true level the found level with the
   nearest number of modules is compared with the truth: ``ari_level1/2/3`` (adjusted
   Rand index), ``n_modules_level1/2/3`` (its module count); ``n_levels_found`` and
   ``nesting_consistency`` (over all levels found) describe the whole hierarchy.
3. Bootstrap over cells: mean module stability (co-clustering) at the matched levels.
4. Enrichment: a GMT with the 27 true module gene sets (all levels) plus decoys (per true
   set, two random sets of the same size and one sharing half its genes);
   ``enrichment_top1_rate`` is the fraction of found modules (at the matched levels)
   whose top term is the true module with the largest overlap at that level.
5. GW-imputed expression (``ari_imputed_level1/2/3``, first world only, not in
   ``--quick``): image features (crop statistics of the crops) are coupled to the RNA
   cells with ``cellsae.tl.gw_map`` and ``GWResult.impute`` projects the module genes'
   expression onto imaged cells; the same automatic hierarchy runs on that. The same
   with the true visual factors as image features gives ``ari_imputed_factors_level*``,
   an upper bound. Unavailable or failing GW-map: the key is null and
   ``imputed_status`` says why.

Usage::

    python benchmarks/pathways.py --quick          # < 60 s on 2 cores
    python benchmarks/pathways.py --out pathways.json     # 3 worlds, + HVG run, ~5 min

The last line printed is one JSON object of flat figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _log_normalize(x):
    from cellsae.tl.pathways import _log_normalize as norm

    return norm(x)


def _matched(hierarchy, truth_labels: dict, mask):
    """For each true level: (index of the found level with the nearest count, ARI)."""
    import numpy as np

    from cellsae.pathways import match_levels

    return match_levels(hierarchy, {lv: np.where(mask, np.asarray(lab).astype(str), "")
                                    for lv, lab in truth_labels.items()})


def _decoy_gmt(truth_sets: dict, genes: list, rng) -> dict:
    sets = dict(truth_sets)
    for name, members in truth_sets.items():
        size = len(members)
        for r in range(2):
            sets[f"DECOY_RANDOM_{r}_{name}"] = list(rng.choice(genes, size=size, replace=False))
        half = list(rng.choice(members, size=size // 2, replace=False))
        others = [g for g in genes if g not in set(members)]
        half += list(rng.choice(others, size=size - len(half), replace=False))
        sets[f"DECOY_HALF_{name}"] = half
    return sets


def _top1_rate(hierarchy, matched: dict, truth_labels: dict, gene_index: dict) -> float:
    import numpy as np

    table = hierarchy.enrichment
    hits = total = 0
    for level, (j, _) in matched.items():
        labels = truth_labels[level]
        for name, genes in hierarchy.modules(j + 1).items():
            if not genes:
                continue
            values, counts = np.unique(labels[[gene_index[g] for g in genes]], return_counts=True)
            expected = values[np.argmax(counts)]
            rows = table[(table["module"] == name)].sort_values(["pvalue", "term"])
            total += 1
            hits += int(not rows.empty and rows.iloc[0]["term"] == expected)
    return hits / total if total else float("nan")


def _one_world(seed: int, args, *, with_extras: bool) -> tuple[dict, object]:
    import numpy as np

    from cellsae.datasets import neuron_world
    from cellsae.pathways import find_hierarchy

    figures: dict = {}
    t0 = time.perf_counter()
    world = neuron_world(n_cells=args.n_cells, seed=seed, crop_size=32)
    figures["seconds_world"] = time.perf_counter() - t0
    rna = world.rna
    var = rna.var
    module_mask = (var["module_level1"] != "").to_numpy()
    genes = rna.var_names[module_mask].astype(str).tolist()
    x_all = _log_normalize(rna.X)
    x = x_all[:, np.flatnonzero(module_mask)].toarray()
    truth = {lv: var[f"module_level{lv}"].to_numpy()[module_mask].astype(str) for lv in (1, 2, 3)}
    rng = np.random.default_rng(seed)
    truth_sets = {}
    for lv in (1, 2, 3):
        for name in sorted(set(truth[lv])):
            truth_sets[name] = [g for g, t in zip(genes, truth[lv], strict=True) if t == name]
    gene_sets = _decoy_gmt(truth_sets, genes, rng)

    t0 = time.perf_counter()
    hierarchy = find_hierarchy(x, genes, n_bootstrap=args.bootstrap, gene_sets=gene_sets,
                               seed=seed)
    figures["seconds_hierarchy"] = time.perf_counter() - t0
    matched = _matched(hierarchy, truth, np.ones(len(genes), dtype=bool))
    for lv, (j, ari) in matched.items():
        figures[f"ari_level{lv}"] = ari
        figures[f"n_modules_level{lv}"] = hierarchy.n_modules[j]
        if hierarchy.module_stability is not None:
            figures[f"stability_level{lv}"] = float(np.nanmean(hierarchy.module_stability[j]))
    figures["n_levels_found"] = hierarchy.n_levels
    figures["n_modules_found"] = "/".join(map(str, hierarchy.n_modules))
    figures["nesting_consistency"] = hierarchy.nesting_consistency
    gene_index = {g: i for i, g in enumerate(genes)}
    figures["enrichment_top1_rate"] = _top1_rate(hierarchy, matched, truth, gene_index)
    figures["n_genes"] = len(genes)
    figures["n_cells"] = int(rna.n_obs)

    if with_extras and args.hvg:
        import anndata as ad
        import scanpy as sc

        tmp = ad.AnnData(X=x_all, var=var[[]].copy())
        sc.pp.highly_variable_genes(tmp, n_top_genes=args.hvg, flavor="seurat")
        sel = np.flatnonzero(tmp.var["highly_variable"].to_numpy())
        sub = x_all[:, sel].toarray()
        keep = sub.std(0) > 0
        sel, sub = sel[keep], sub[:, keep]
        h_hvg = find_hierarchy(sub, rna.var_names[sel].astype(str).tolist(), seed=seed)
        in_module = module_mask[sel]
        truth_hvg = {lv: var[f"module_level{lv}"].to_numpy()[sel].astype(str) for lv in (1, 2, 3)}
        for lv, (_j, ari) in _matched(h_hvg, truth_hvg, in_module).items():
            figures[f"ari_hvg_level{lv}"] = ari
        figures["hvg_module_genes"] = int(in_module.sum())
        figures["hvg_nesting_consistency"] = h_hvg.nesting_consistency
        figures["hvg_n_modules_found"] = "/".join(map(str, h_hvg.n_modules))
    return figures, (world, genes, truth)


def run(args) -> dict:
    import numpy as np

    figures: dict = {}
    per_seed = []
    first = None
    for i, seed in enumerate(args.seeds):
        one, data = _one_world(seed, args, with_extras=(i == 0))
        per_seed.append(one)
        first = first or data
        for key, value in one.items():
            figures[f"{key}_seed{seed}"] = value
    averaged = ["ari_level1", "ari_level2", "ari_level3", "nesting_consistency",
                "enrichment_top1_rate", "stability_level1", "stability_level2",
                "stability_level3", "seconds_hierarchy"]
    for key in averaged:
        values = [one[key] for one in per_seed if key in one]
        if values:
            figures[key] = float(np.mean(values))
            figures[f"{key}_min"] = float(np.min(values))
    for key, value in per_seed[0].items():
        if key.startswith(("ari_hvg", "hvg_")):
            figures[key] = value
    figures["seeds"] = ",".join(map(str, args.seeds))

    try:
        from cellsae.tl import gw_map  # noqa: F401
    except ImportError:
        figures["ari_imputed_level2"] = None
        figures["imputed_status"] = "not measured: cellsae.tl.gw_map is not available"
    else:
        if args.imputed:
            figures.update(_imputed(*first, args))
        else:
            figures["ari_imputed_level2"] = None
            figures["imputed_status"] = ("not measured in this run: the GW-map takes ~100 s per "
                                         "image representation; run without --quick")
    return figures


def _imputed(world, genes, truth, args) -> dict:
    """Modules from GW-imputed expression on imaged cells (the GW-map stage's output).

    Image features: ``cellsae.embed.evaluate.crop_statistics`` of the crops (hand-made
    per-channel statistics, no training), and, as an upper bound on what the images could
    give, the world's true visual factors (``cells.obsm["factors"]``). Each is coupled to
    the RNA cells with ``cellsae.tl.gw_map``; ``GWResult.impute`` projects the log-normalised
    module-gene expression onto imaged cells, and ``find_hierarchy`` runs on that.
    """
    import numpy as np

    from cellsae.embed.evaluate import crop_statistics
    from cellsae.pathways import find_hierarchy
    from cellsae.tl import gw_map

    out: dict = {}
    rna = world.rna
    idx = rna.var_names.get_indexer(genes)
    x = _log_normalize(rna.X)[:, idx].toarray()
    cells = world.cells
    features, _ = crop_statistics(cells)
    cells.obsm["X_measure"] = features
    pairing = np.asarray(world.truth.pairing)
    for tag, rep in (("", "X_measure"), ("_factors", "factors")):
        t0 = time.perf_counter()
        try:
            gw = gw_map(cells, rna, use_rep_img=rep, seed=args.seed, key_added=f"gw{tag}")
            imputed = np.asarray(gw.impute(x), dtype=np.float64)
        except Exception as err:  # report the GW stage's failure, never guess a number
            out[f"ari_imputed{tag}_level2"] = None
            out[f"imputed{tag}_status"] = f"not measured: gw_map failed ({type(err).__name__}: {err})"
            continue
        out[f"seconds_gw{tag}"] = time.perf_counter() - t0
        if (pairing >= 0).all():
            out[f"gw{tag}_foscttm"] = float(gw.foscttm(pairing))
        ok = ~np.isnan(imputed).any(1)
        imputed = imputed[ok]
        if (pairing >= 0).all():
            corr = [np.corrcoef(imputed[:, j], x[pairing[ok], j])[0, 1]
                    for j in range(x.shape[1])]
            out[f"imputed{tag}_gene_corr_median"] = float(np.nanmedian(corr))
        keep = imputed.std(0) > 0
        h = find_hierarchy(imputed[:, keep], list(np.asarray(genes)[keep]), seed=args.seed)
        truth_kept = {lv: t[keep] for lv, t in truth.items()}
        matched = _matched(h, truth_kept, np.ones(int(keep.sum()), dtype=bool))
        for lv, (j, ari) in matched.items():
            out[f"ari_imputed{tag}_level{lv}"] = ari
            out[f"n_modules_imputed{tag}_level{lv}"] = h.n_modules[j]
        out[f"imputed{tag}_nesting_consistency"] = h.nesting_consistency
        out[f"imputed{tag}_n_modules_found"] = "/".join(map(str, h.n_modules))
        out[f"imputed{tag}_status"] = f"measured (image features: {rep})"
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, < 60 s on 2 cores")
    parser.add_argument("--out", help="also write the JSON figures to this file")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated world seeds (default 0 in --quick, 0,1,2 otherwise);"
                        " accuracy figures are the mean over seeds, with _min and _seedN keys")
    parser.add_argument("--n-cells", type=int, default=None)
    parser.add_argument("--bootstrap", type=int, default=None)
    parser.add_argument("--hvg", type=int, default=None,
                        help="also cluster the N most variable genes (default 600, 0 in --quick)")
    parser.add_argument("--imputed", type=int, default=None,
                        help="1 to measure modules from GW-imputed expression (default: on, "
                        "off in --quick)")
    args = parser.parse_args(argv)
    if args.imputed is None:
        args.imputed = 0 if args.quick else 1
    if args.seeds is None:
        args.seeds = "0" if args.quick else "0,1,2"
    args.seeds = [int(v) for v in str(args.seeds).split(",") if v.strip()]
    args.seed = args.seeds[0]
    if args.n_cells is None:
        args.n_cells = 2000
    if args.bootstrap is None:
        args.bootstrap = 4 if args.quick else 20
    if args.hvg is None:
        args.hvg = 0 if args.quick else 600
    t0 = time.perf_counter()
    figures = run(args)
    figures["seconds_total"] = time.perf_counter() - t0
    figures["quick"] = bool(args.quick)
    line = json.dumps(figures)
    if args.out:
        from cellsae._utils import atomic_write_text

        atomic_write_text(args.out, line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
