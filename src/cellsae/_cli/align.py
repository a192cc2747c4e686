"""``cellsae align``: GW-map between image cells and scRNA-seq cells."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("align")
    def align(
        image: Path = typer.Argument(..., help="Image-cell AnnData (.h5ad or .h5sc) with "
                                     "features in X (e.g. SAE latents) or --use-rep-img."),
        rna: Path = typer.Argument(..., help="scRNA-seq AnnData (.h5ad): raw counts in X, "
                                   "or a latent named by --use-rep-rna."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder: gw_result.npz, "
                                 "summary.json, image.h5ad and rna.h5ad with the results."),
        use_rep_img: str = typer.Option(None, help="obsm key of the image features "
                                        "(default: X)."),
        use_rep_rna: str = typer.Option(None, help="obsm key of an RNA latent such as X_scVI "
                                        "(default: normalise, log1p, HVGs, PCA of X)."),
        labels_key: str = typer.Option(None, help="RNA obs column to transfer onto image "
                                       "cells."),
        method: str = typer.Option("auto", help="exact, landmark, or auto (landmark above "
                                   "12k cells per side)."),
        n_neighbors: str = typer.Option("15,30,50", help="kNN sizes, comma-separated "
                                        "(averaged or a grid, see --cost)."),
        epsilon: str = typer.Option("0.002,0.005,0.01", help="Candidate entropic "
                                    "regularisations, comma-separated."),
        criterion: str = typer.Option("consensus", help="Label-free selection: consensus, "
                                      "objective or distortion."),
        refine: float = typer.Option(0.5, help="GW weight of the label-free refinement step "
                                     "after the selection (a fused GW on ridge maps fitted to "
                                     "the coupling's own pseudo-pairs); 0 turns it off."),
        cost: str = typer.Option("knn_geodesic", help="Intra-domain cost: knn_geodesic "
                                 "(every k, epsilon pair is a candidate), "
                                 "multiscale_geodesic (kNN geodesics averaged over every "
                                 "--n-neighbors, only epsilon is selected), euclidean, "
                                 "cosine."),
        n_pcs: int = typer.Option(30, help="Principal components per side."),
        n_landmarks: int = typer.Option(2000, help="Anchors per side for the landmark "
                                        "solver."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        seed: int = typer.Option(0, help="Random seed."),
    ) -> None:
        """Couple image cells with RNA cells by Gromov–Wasserstein (no shared features).

        Chooses the kNN size and ε without labels, then writes the coupling, the
        selection scores, label transfer and a joint embedding.
        """
        import json
        import logging

        import anndata as ad

        from .._utils import atomic_path, atomic_write_text, require_file
        from ..tl.align import gw_map

        log = logging.getLogger("cellsae.align")
        require_file(image, what="image AnnData")
        require_file(rna, what="RNA AnnData")
        try:
            ks = [int(v) for v in n_neighbors.split(",") if v.strip()]
            eps = [float(v) for v in epsilon.split(",") if v.strip()]
        except ValueError as err:
            raise ValueError(f"--n-neighbors and --epsilon take comma-separated numbers: {err}"
                             ) from None
        adata_img = ad.read_h5ad(image)
        adata_rna = ad.read_h5ad(rna)
        result = gw_map(adata_img, adata_rna, use_rep_img=use_rep_img,
                        use_rep_rna=use_rep_rna, labels_key=labels_key, method=method,
                        n_neighbors=ks, epsilon=eps, criterion=criterion, cost=cost,
                        refine=refine if refine > 0 else None,
                        n_pcs=n_pcs,
                        n_landmarks=n_landmarks, device=device, seed=seed)
        out.mkdir(parents=True, exist_ok=True)
        result.save(out / "gw_result.npz")
        for name, a in (("image.h5ad", adata_img), ("rna.h5ad", adata_rna)):
            if "single_cell_images" in a.obsm and name == "image.h5ad":
                del a.obsm["single_cell_images"]  # crops stay in the input file
            a.uns.pop("gw_map", None)
            with atomic_path(out / name) as tmp:
                a.write_h5ad(tmp)
        atomic_write_text(out / "summary.json", json.dumps(result.to_dict(), indent=2))
        log.info("wrote %s (objective %.4g, converged=%s)", out, result.objective,
                 result.converged)
