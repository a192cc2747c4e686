"""``cellsae sae``: train sparse autoencoders and encode data with them."""

from __future__ import annotations

from pathlib import Path

import typer

sae_app = typer.Typer(
    help=(
        "Train a sparse autoencoder on CNN tokens or cell embeddings (.npy, .zarr, .h5 or "
        ".h5ad inputs, streamed), and encode data into sparse latent codes."
    ),
    no_args_is_help=True,
)


def _parse_value(text: str):
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


@sae_app.command("train")
def train_command(
    data: Path = typer.Argument(..., help="Training inputs: .npy (memory-mapped), .zarr, .h5/.hdf5 or .h5ad."),
    out: Path = typer.Option(..., "--out", "-o", help="Model path; writes OUT.safetensors and OUT.json."),
    key: str | None = typer.Option(None, help="Array inside a container file, e.g. obsm/X_cnn (for .h5ad, 'X_cnn' is looked up under obsm/)."),
    arch: str | None = typer.Option(None, help="relu | topk | batchtopk | jumprelu | gated | matryoshka (default batchtopk)."),
    preset: str | None = typer.Option(None, help="Named setting, e.g. 'paper' (gated, 8192 latents, unit-norm inputs)."),
    d_sae: int | None = typer.Option(None, "--d-sae", help="Number of latents (default 4096)."),
    k: int | None = typer.Option(None, help="Active latents per sample (TopK family)."),
    steps: int | None = typer.Option(None, help="Training steps (default: about 10 epochs, at most 20M samples)."),
    epochs: float | None = typer.Option(None, help="Training length in epochs (instead of --steps)."),
    batch_size: int | None = typer.Option(None, help="Samples per step (default 4096)."),
    lr: float | None = typer.Option(None, help="Peak learning rate (default scales as 1/sqrt(d_sae))."),
    option: list[str] = typer.Option([], "--set", help="Any other setting as NAME=VALUE (JSON value), e.g. --set l1_coeff=2 --set early_stop_patience=5."),
    checkpoint_dir: Path | None = typer.Option(None, help="Folder for step_*.safetensors checkpoints."),
    checkpoint_every: int | None = typer.Option(None, help="Steps between checkpoints."),
    resume: Path | None = typer.Option(None, help="Continue exactly from a checkpoint file or folder (same other options)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    seed: int = typer.Option(0, help="Seed of the initialisation and the data order."),
) -> None:
    """Train an SAE and save it with its normalisation folded in (it takes raw inputs).

    Example: cellsae sae train tokens.npy --out runs/sae --arch batchtopk --d-sae 8192 --k 32
    """
    import json
    import logging

    from ..sae import train

    extra = {}
    for item in option:
        if "=" not in item:
            raise typer.BadParameter(f"--set expects NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        extra[name.strip()] = _parse_value(value)
    if batch_size is not None:
        extra["batch_size"] = batch_size
    if lr is not None:
        extra["lr"] = lr
    sae = train(str(data), arch=arch, d_sae=d_sae, k=k, preset=preset, key=key,
                n_steps=steps, n_epochs=epochs, seed=seed, device=device,
                checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                resume=resume, **extra)
    sae.save(out)
    final = sae.train_info.get("final", {})
    logging.getLogger("cellsae").info(
        "saved %s SAE to %s: %s", sae.arch, out,
        json.dumps({k: round(v, 4) for k, v in final.items() if isinstance(v, float)}))


@sae_app.command("encode")
def encode_command(
    data: Path = typer.Argument(..., help="Inputs: .npy, .zarr, .h5/.hdf5 or .h5ad."),
    model: Path = typer.Option(..., "--model", "-m", help="A saved SAE (NAME.safetensors with NAME.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: .h5ad (cells × latents AnnData) or .npz (scipy sparse matrix)."),
    key: str | None = typer.Option(None, help="Array inside a container file; for .h5ad the obsm key (default X_cnn)."),
    batch_size: int = typer.Option(8192, help="Rows encoded at a time."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
) -> None:
    """Encode inputs into sparse SAE codes.

    With an .h5ad input the output AnnData keeps the cells' obs and has per-latent
    statistics in var. Example: cellsae sae encode cells.h5ad --model runs/sae --out latents.h5ad
    """
    from scipy import sparse

    from .._utils import atomic_path, resolve_device
    from ..sae import load

    if out.suffix not in (".h5ad", ".npz"):
        raise ValueError(f"--out must end in .h5ad or .npz, got '{out}'")
    sae = load(model, device=resolve_device(device))
    if data.suffix == ".h5ad":
        import anndata as ad

        from ..tl.sae import sae_encode

        adata = ad.read_h5ad(data)
        result = sae_encode(adata, sae, use_rep=key or "X_cnn",
                            batch_size=batch_size)
        codes = result.X
    else:
        from ..sae.data import open_source
        from ..tl.sae import latent_anndata

        codes = sae.encode(open_source(str(data), key=key), batch_size=batch_size)
        result = None
    if out.suffix == ".npz":
        with atomic_path(out) as tmp, open(tmp, "wb") as handle:
            sparse.save_npz(handle, codes)
        return
    if result is None:
        result = latent_anndata(codes, sae, params={"use_rep": str(data)})
    with atomic_path(out) as tmp:
        result.write_h5ad(tmp)


def register(app: typer.Typer) -> None:
    app.add_typer(sae_app, name="sae")
