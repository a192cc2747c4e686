"""``cellsae embed``: train an image encoder on crops, extract embeddings and tokens."""

from __future__ import annotations

from pathlib import Path

import typer

embed_app = typer.Typer(
    help=(
        "Train a CNN (or small ViT) on single-cell crops and extract cell embeddings "
        "(obsm['X_cnn']) and spatial tokens (a zarr token store for the SAE)."
    ),
    no_args_is_help=True,
)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


@embed_app.command("train")
def train(
    crops: Path = typer.Argument(..., help="Crops file (.h5sc) with obs columns for labels and donors."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: encoder.safetensors/.json, checkpoints, train_result.json, split.csv."),
    label_key: str = typer.Option("genotype", help="obs column with the class of each cell."),
    donor_key: str = typer.Option("donor", help="obs column with the donor of each cell (validation/test donors are never trained on)."),
    split_mode: str = typer.Option("donor", help="Split by random|field|well|plate|donor."),
    fractions: str = typer.Option("0.6,0.2,0.2", help="Train,val,test shares of the split groups."),
    objective: str = typer.Option("supervised", help="supervised | moco | supcon (the paper's)."),
    arch: str = typer.Option("resnet", help="Encoder architecture: resnet | vit."),
    widths: str | None = typer.Option(None, help="ResNet stage widths, e.g. 16,32,64."),
    blocks: str | None = typer.Option(None, help="ResNet blocks per stage, e.g. 1,1,1."),
    norm: str | None = typer.Option(None, help="ResNet normalisation: batch | group | none."),
    epochs: int | None = typer.Option(None, help="Training epochs."),
    batch_size: int | None = typer.Option(None, help="Global batch size."),
    lr: float | None = typer.Option(None, help="Peak learning rate."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML with TrainConfig fields (flags override it)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    num_workers: int | None = typer.Option(None, help="Data-loader workers reading the crops file."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.json if present."),
    seed: int = typer.Option(0, help="Random seed (split, initialisation, batches, augmentation)."),
) -> None:
    """Train an encoder on crops, holding out whole donors for validation and test.

    Example: cellsae embed train cells.h5sc --out runs/enc --objective supcon --epochs 20
    """
    import json

    import numpy as np
    import pandas as pd

    from ..config import load_yaml
    from ..crops import read_h5sc
    from ..embed import make_split, train_encoder
    from ..embed.train import DEFAULT_ENCODER

    adata = read_h5sc(crops)
    for key in (label_key,) + ((donor_key,) if split_mode == "donor" else ()):
        if key not in adata.obs.columns:
            raise KeyError(f"obs column {key!r} not found in '{crops}'; columns: "
                           f"{list(adata.obs.columns)}")
    cfg = load_yaml(config) if config is not None else {}
    overrides = {"objective": objective, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                 "num_workers": num_workers, "seed": seed}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    share = [float(v) for v in fractions.split(",")]
    split = make_split(adata.obs, split_mode, label_key=label_key, fractions=share, seed=seed)
    enc: dict = dict(DEFAULT_ENCODER) if arch == "resnet" else {"arch": arch}
    for name, value in (("widths", _ints(widths, "widths")), ("blocks", _ints(blocks, "blocks")),
                        ("norm", norm)):
        if value is not None:
            enc[name] = value
    if enc.get("widths") and enc.get("blocks") and len(enc["widths"]) != len(enc["blocks"]):
        enc["blocks"] = [1] * len(enc["widths"])
    if arch == "resnet" and "strides" in enc and len(enc["strides"]) != len(enc["widths"]):
        enc["strides"] = [1] + [2] * (len(enc["widths"]) - 1)
    donors = adata.obs[donor_key].to_numpy() if donor_key in adata.obs.columns else None
    result = train_encoder(crops, adata.obs[label_key], donors=donors, split=split, encoder=enc,
                           config=cfg, out_dir=out, resume=resume, device=device)
    pd.DataFrame({"cell": adata.obs_names, "split": result.split}).to_csv(out / "split.csv",
                                                                         index=False)
    (out / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    typer.echo(f"encoder: {out / 'encoder.safetensors'}  best val acc "
               f"{result.best_val_acc:.3f} (epoch {result.best_epoch}); "
               f"{int(np.sum(result.split == 'test'))} test cells held out")


@embed_app.command("extract")
def extract(
    model: Path = typer.Argument(..., help="Encoder file (encoder.safetensors or its .json)."),
    crops: Path = typer.Argument(..., help="Crops file (.h5sc)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .h5ad: the cells' obs with obsm['X_cnn']."),
    tokens: Path | None = typer.Option(None, help="Write spatial tokens to this zarr store."),
    layer: str | None = typer.Option(None, help="Tap(s) for the pooled embedding, comma-separated to concatenate (default: last)."),
    tokens_layer: str | None = typer.Option(None, help="Tap for the tokens (default: --layer)."),
    token_pool: int = typer.Option(1, help="Average-pool the token map by this factor."),
    tta: str = typer.Option("dihedral", help="Average the cell embedding over test-time views: dihedral (8 rotations/reflections), rot90 (4) or none. Tokens are never augmented."),
    key_added: str = typer.Option("X_cnn", help="obsm key for the embeddings."),
    batch_size: int = typer.Option(256, help="Crops per forward pass."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    num_workers: int = typer.Option(0, help="Data-loader workers reading the crops file."),
    overwrite: bool = typer.Option(False, help="Replace existing outputs."),
    dask: str | None = typer.Option(None, help="Run blocks of cells on dask: 'local' (a LocalCluster) or a scheduler address tcp://host:8786 (workers must see the crops and --tokens at the same paths). Needs pip install 'cellsae[dask]'."),
    dask_workers: int = typer.Option(2, help="Workers of a local dask cluster."),
) -> None:
    """Embed every crop with a trained encoder; optionally write a token store.

    Example: cellsae embed extract runs/enc/encoder.safetensors cells.h5sc --out cells.h5ad --tokens tokens.zarr
    """
    from .._utils import atomic_path
    from ..crops import read_h5sc
    from ..embed import extract as run_extract
    from ..embed import load_encoder

    if out.exists() and not overwrite:
        raise FileExistsError(f"'{out}' exists; pass --overwrite or choose another path")
    encoder = load_encoder(model)
    adata = read_h5sc(crops)
    layers = None if layer is None else [v.strip() for v in layer.split(",") if v.strip()]
    result = run_extract(encoder, crops, adata=adata, layer=layers, tokens_out=tokens,
                         tokens_layer=tokens_layer, token_pool=token_pool, tta=tta,
                         key_added=key_added,
                         batch_size=batch_size, device=device, num_workers=num_workers,
                         overwrite=overwrite, dask=dask, dask_workers=dask_workers)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    msg = f"{adata.n_obs} cells × {result.embeddings.shape[1]} → {out} (obsm['{key_added}'])"
    if tokens is not None:
        msg += f"; {adata.n_obs * result.tokens_per_cell} tokens → {tokens}"
    typer.echo(msg)


def register(app: typer.Typer) -> None:
    app.add_typer(embed_app, name="embed")
