"""Plate folders in, one ``.h5sc`` single-cell file out.

:func:`ingest` runs, per plate: discover fields → calibrate (flat-field, normalisation
percentiles, typical focus and nucleus size from a sample of fields) → process every
field in worker processes (read → project → correct → segment → QC → crops and
measurements) → call dead cells plate-wise → stream all crops into the output.

Every finished field is written atomically to ``<out>.parts/`` so an interrupted run
resumes where it stopped; the output file itself is written to a temporary name and
renamed at the end, so it is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field

from .._utils import atomic_path, atomic_write_text, progress
from ..config import StrictModel, validate_config
from .io import (
    ImageReadError,
    PlateSource,
    discover_plates,
    open_plate,
    parse_channel_map,
    read_platemap,
)

logger = logging.getLogger(__name__)

__all__ = ["IngestConfig", "IngestResult", "ingest", "process_field"]

DEFAULT_CHANNELS = "3=mito,4=lyso,1=nucleus,2=death"
_FORMAT_VERSION = 1


class IngestConfig(StrictModel):
    """Settings of :func:`ingest` (validated; unknown keys are errors).

    channels : channel map, "id=name" pairs in the order crops should carry them (default
        the paper's scanner: ch3 mito, ch4 lyso, ch1 nucleus, ch2 death), or bare names for
        channels 1, 2, 3, ... in file order.
    pattern : file-name pattern: preset ("phenix", "metaxpress", "cellvoyager", "stack"),
        template or regex (see :class:`cellsae.images.io.FilenamePattern`).
    n_workers : local worker processes for fields (0 or 1: in this process).
    dask : run fields on dask instead: ``True`` / ``"local"`` starts a LocalCluster of
        ``n_workers`` workers, ``"tcp://host:8786"`` uses an existing scheduler (workers
        on other machines must see the plate folder and the output folder at the same
        paths). Needs ``pip install 'cellsae[dask]'``.
    dask_processes : LocalCluster workers are processes (True) or threads of this process.
    """

    channels: str = DEFAULT_CHANNELS
    pattern: str = "phenix"
    projection: Literal["max", "mean", "sum", "median", "best_focus"] = "max"
    nucleus_channel: str = "nucleus"
    cytoplasm_channel: str | None = "mito"
    death_channel: str | None = "death"
    death_threshold: float | None = None
    death_method: Literal["otsu", "gmm"] = "otsu"
    segmentation_backend: str = "classical"
    segmentation_params: dict[str, Any] = Field(default_factory=dict)
    crop_size: int = Field(128, ge=8, le=1024)
    border: Literal["pad", "drop"] = "pad"
    mask_channel: bool = True
    flatfield: bool = True
    background_percentile: float = Field(5.0, ge=0, le=50)
    normalize_percentiles: tuple[float, float] = (1.0, 99.8)
    calibration_fields: int = Field(12, ge=1)
    min_focus_ratio: float = Field(0.25, ge=0)
    max_saturation: float = Field(0.05, ge=0, le=1)
    skip_flags: tuple[str, ...] = ("empty", "out_of_focus", "debris")
    unmapped_wells: Literal["skip", "error"] = "skip"
    n_workers: int = Field(2, ge=0)
    dask: bool | str | None = None
    dask_processes: bool = True
    seed: int = Field(0, ge=0)

    def fingerprint(self) -> str:
        """Hash of every setting that changes per-field results (not workers/death calls)."""
        data = self.model_dump(
            exclude={"n_workers", "death_threshold", "death_method", "unmapped_wells",
                     "dask", "dask_processes"}
        )
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[
            :16
        ]


@dataclass(frozen=True)
class IngestResult:
    """What :func:`ingest` produced."""

    path: Path
    n_cells: int
    n_fields: int
    n_fields_skipped: int
    qc: pd.DataFrame
    death_thresholds: dict
    channel_names: list[str]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "n_cells": self.n_cells,
            "n_fields": self.n_fields,
            "n_fields_skipped": self.n_fields_skipped,
            "death_thresholds": {str(k): v for k, v in self.death_thresholds.items()},
            "channel_names": self.channel_names,
        }


# -- per field ------------------------------------------------------------------------------


def _part_name(well: str, field: int) -> str:
    return f"{well}_f{field:03d}.npz"


def process_field(task: dict) -> dict:
    """Process one field and write its part file; returns a QC record.

    ``task`` holds plain values only (it crosses process boundaries): plate folder,
    pattern, plate name, well, field, channel ids and names, calibration file, config
    dict, typical nucleus area, part path. Bad input (unreadable, missing or mismatched
    files) is recorded as ``status="skipped"`` with the reason; nothing is written then.
    """
    from .cells import extract_crops, measure_cells
    from .preprocess import PlateCalibration, correct_field, project
    from .qc import QCThresholds, field_qc
    from .segmentation import segment_cells, segment_nuclei

    cfg = IngestConfig(**task["config"])
    record = {
        "plate": task["plate"],
        "well": task["well"],
        "field": task["field"],
        "status": "ok",
        "reason": "",
        "n_cells": 0,
    }
    names: list[str] = task["channel_names"]
    try:
        if task.get("files") is not None:  # the field's own rows: no folder re-scan
            source = PlateSource.from_table(
                task["folder"],
                pd.DataFrame(task["files"]),
                pattern=cfg.pattern,
                name=task["plate"],
                planes=task.get("planes"),
            )
        else:
            source = open_plate(task["folder"], pattern=cfg.pattern, name=task["plate"])
        stack = source.read_field(task["well"], task["field"], task["channel_ids"])
        raw_dtype = stack.dtype
        projected = project(stack, cfg.projection)
        del stack
        calibration = PlateCalibration.load(task["calibration"])
        corrected, normalised = correct_field(
            projected, calibration, background_percentile=cfg.background_percentile
        )
    except (ImageReadError, ValueError) as err:
        reason = str(err)
        if not isinstance(err, ImageReadError) and task.get("files"):
            reason = f"'{task['files'][0]['path']}' (and the rest of this field): {reason}"
        record.update(status="skipped", reason=reason)
        logger.warning(
            "skipping %s %s field %s: %s", task["plate"], task["well"], task["field"], err
        )
        return record

    nuc_i = names.index(cfg.nucleus_channel)
    nuclei = segment_nuclei(
        projected[nuc_i], backend=cfg.segmentation_backend, **cfg.segmentation_params
    )
    max_value = float(np.iinfo(raw_dtype).max) if np.issubdtype(raw_dtype, np.integer) else None
    qc = field_qc(
        projected[nuc_i],
        nuclei,
        focus_reference=calibration.focus_median,
        typical_area=task.get("typical_area", np.nan),
        max_value=max_value,
        thresholds=QCThresholds(
            min_focus_ratio=cfg.min_focus_ratio,
            max_saturation=cfg.max_saturation,
            skip_flags=tuple(cfg.skip_flags),
        ),
    )
    record.update({f"qc_{k}": v for k, v in qc.to_dict().items()})
    skip = [f for f in qc.flags if f in cfg.skip_flags]
    if skip:
        record.update(status="qc_failed", reason=";".join(skip))
        logger.warning(
            "skipping %s %s field %s: QC flag(s) %s (focus %.3g, %d nuclei)",
            task["plate"],
            task["well"],
            task["field"],
            ", ".join(skip),
            qc.focus,
            qc.n_cells,
        )
        nuclei = np.zeros_like(nuclei)
    cyto = corrected[names.index(cfg.cytoplasm_channel)] if cfg.cytoplasm_channel in names else None
    cells = segment_cells(nuclei, cyto)
    crops = extract_crops(normalised, nuclei, cells, size=cfg.crop_size, border=cfg.border)
    images = crops.crops if cfg.mask_channel else crops.crops[:, :-1]
    features, feature_names = measure_cells(corrected, nuclei, cells, names, labels=crops.labels)
    record["n_cells"] = int(len(crops.labels))
    with atomic_path(task["part"], suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            crops=images.astype(np.float16),
            labels=crops.labels,
            centres=crops.centres,
            touches_border=crops.touches_border,
            features=features,
            feature_names=np.array(feature_names),
            record=np.array(json.dumps(record, default=float)),
        )
    return record


# -- calibration ----------------------------------------------------------------------------


def _calibrate(
    source: PlateSource,
    fields: list[tuple[str, int]],
    ids: list,
    names: list[str],
    cfg: IngestConfig,
    path: Path,
) -> tuple[float, list[dict]]:
    """Estimate and save the plate calibration; returns typical nucleus area and
    records of fields that failed to read during sampling."""
    from .preprocess import PlateCalibration, project
    from .segmentation import segment_nuclei

    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(fields))
    sample, problems = [], []
    for i in order:
        if len(sample) >= cfg.calibration_fields:
            break
        well, field = fields[i]
        try:
            sample.append(project(source.read_field(well, field, ids), cfg.projection))
        except ImageReadError as err:
            problems.append({"well": well, "field": field, "reason": str(err)})
    if not sample:
        raise ValueError(
            f"plate '{source.folder}': no field could be read for calibration; "
            f"first problem: {problems[0]['reason'] if problems else 'no fields'}"
        )
    shapes = [s.shape for s in sample]
    common = max(set(shapes), key=shapes.count)
    sample = [s for s in sample if s.shape == common]
    nuc = names.index(cfg.nucleus_channel)
    cal = PlateCalibration.estimate(
        sample,
        names,
        nucleus_channel=nuc,
        percentiles=tuple(cfg.normalize_percentiles),
        background_percentile=cfg.background_percentile,
        flatfield=cfg.flatfield,
    )
    cal.save(path)
    areas = []
    for s in sample[:3]:
        labels = segment_nuclei(s[nuc], backend=cfg.segmentation_backend, **cfg.segmentation_params)
        if labels.max():
            areas.append(np.median(np.bincount(labels.ravel())[1:]))
    typical_area = float(np.median(areas)) if areas else float("nan")
    return typical_area, problems


# -- the whole run --------------------------------------------------------------------------


def _prepare_platemap(platemap, plates: list[PlateSource]) -> pd.DataFrame | None:
    if platemap is None:
        return None
    table = platemap if isinstance(platemap, pd.DataFrame) else read_platemap(platemap)
    if "plate" in table.columns:
        names = {p.name for p in plates}
        if not names & set(table["plate"]):
            raise ValueError(
                f"the plate map's 'plate' column lists {sorted(set(table['plate']))[:5]}"
                f" but the plate folders are {sorted(names)}; plate names must "
                "match folder names"
            )
    return table


def _map_row(table: pd.DataFrame | None, plate: str, well: str) -> dict | None:
    if table is None:
        return {}
    sel = table[table["well"] == well]
    if "plate" in table.columns:
        sel = sel[sel["plate"] == plate]
    if not len(sel):
        return None
    row = sel.iloc[0].to_dict()
    for k in ("plate", "well", "row", "col"):
        row.pop(k, None)
    return row


def ingest(
    plate_dir: str | Path,
    out: str | Path,
    *,
    platemap: str | Path | pd.DataFrame | None = None,
    config: IngestConfig | dict | None = None,
    overwrite: bool = False,
    keep_parts: bool = False,
    **settings,
) -> IngestResult:
    """Turn plate folders into a single-cell ``.h5sc`` file.

    Parameters
    ----------
    plate_dir : a plate folder, or a folder whose sub-folders are plates.
    out : the ``.h5sc`` file to write (temporary name + rename; parts in ``<out>.parts``).
    platemap : plate-map CSV (or DataFrame) with ``well`` and optionally ``plate``,
        donor, genotype, condition, ...; wells absent from it are skipped and recorded
        in the QC table (``unmapped_wells="error"`` stops instead).
    config : an :class:`IngestConfig` or dict; ``**settings`` override single fields.
    overwrite : replace an existing ``out`` (and stale parts from other settings).
    keep_parts : keep ``<out>.parts`` after success.

    Returns
    -------
    IngestResult. The file holds ``obsm["single_cell_images"]`` (n, C, S, S) float16 (the
    last channel is the cell mask when ``mask_channel``), ``obsm["X_measure"]`` with
    names in ``uns["X_measure_names"]``, ``obs`` (plate, well, field, x, y, platemap
    columns, ``death_intensity``, ``dead``, ``touches_border``), ``uns["qc"]`` (one row per
    field) and ``uns["death_rates_well"]``/``uns["death_rates_field"]``.
    """
    if isinstance(config, IngestConfig):
        cfg = config.model_copy(update=settings) if settings else config
        cfg = validate_config(IngestConfig, cfg.model_dump(), source="ingest settings")
    else:
        cfg = validate_config(
            IngestConfig, {**(config or {}), **settings}, source="ingest settings"
        )
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output '{out}' already exists; pass overwrite=True "
            "(--overwrite) or choose another --out"
        )
    plates = discover_plates(plate_dir, pattern=cfg.pattern)
    table = _prepare_platemap(platemap, plates)

    # Pre-flight: everything that would make the whole run wrong stops here, before any
    # output is written.
    per_plate = []
    for plate in plates:
        try:
            plate.name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"plate folder name {plate.name!r} is not valid UTF-8 (written in another "
                "encoding?); rename the folder: plate names are stored as text in the output"
            ) from None
        available = plate.channels if plate.per_plane else None
        if plate.per_plane:
            cmap = parse_channel_map(cfg.channels, available)
            ids = list(cmap)
        else:
            cmap = parse_channel_map(cfg.channels)
            # Stack layouts address channels by position: ids count from 1 in the map.
            ids = [int(k) - 1 for k in cmap]
        names = list(cmap.values())
        for role, name in (
            ("nucleus_channel", cfg.nucleus_channel),
            ("cytoplasm_channel", cfg.cytoplasm_channel),
            ("death_channel", cfg.death_channel),
        ):
            if name is not None and name not in names and role == "nucleus_channel":
                raise ValueError(
                    f"nucleus channel {name!r} is not in the channel map {cmap}; "
                    "name it in --channels or set --nucleus-channel"
                )
            if name is not None and name not in names:
                logger.warning(
                    "plate %s: %s %r is not in the channel map %s; %s",
                    plate.name,
                    role,
                    name,
                    cmap,
                    "cells get ring-shaped bodies"
                    if role == "cytoplasm_channel"
                    else "no death calls",
                )
        fields = plate.fields()
        if not fields:
            raise FileNotFoundError(
                f"plate '{plate.folder}' has no image files matching the '{cfg.pattern}' pattern"
            )
        unmapped = sorted({w for w, _ in fields if _map_row(table, plate.name, w) is None})
        if unmapped and cfg.unmapped_wells == "error":
            raise ValueError(
                f"plate '{plate.name}': wells {unmapped} have images but are not "
                "in the plate map; add them or use unmapped_wells='skip'"
            )
        per_plate.append((plate, ids, names, fields, unmapped))
    channel_names = per_plate[0][2]
    if any(p[2] != channel_names for p in per_plate):
        raise ValueError("all plates must have the same channels")

    parts = out.with_name(out.name + ".parts")
    manifest = {
        "format_version": _FORMAT_VERSION,
        "fingerprint": cfg.fingerprint(),
        "plates": [str(p.folder) for p in plates],
    }
    manifest_path = parts / "manifest.json"
    if parts.exists() and any(parts.iterdir()):
        try:
            old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        except json.JSONDecodeError:
            old = {}
        if old != manifest:
            if not overwrite:
                raise ValueError(
                    f"'{parts}' holds finished fields from a run with different "
                    "settings or plates; delete it, or pass overwrite=True "
                    "(--overwrite) to start over"
                )
            shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(manifest_path, json.dumps(manifest, indent=1))

        records: list[dict] = []
        tasks: list[dict] = []
        for plate, ids, names, fields, unmapped in per_plate:
            plate_parts = parts / plate.name
            plate_parts.mkdir(exist_ok=True)
            cal_path = plate_parts / "calibration.npz"
            area_path = plate_parts / "typical_area.json"
            if cal_path.exists() and area_path.exists():
                typical_area = json.loads(area_path.read_text())["typical_area"]
            else:
                mapped = [f for f in fields if f[0] not in unmapped] or fields
                typical_area, _ = _calibrate(plate, mapped, ids, names, cfg, cal_path)
                atomic_write_text(area_path, json.dumps({"typical_area": typical_area}))
            field_rows = (
                plate.files.groupby(["well", "field"]).indices
                if isinstance(plate, PlateSource)
                else None
            )
            for well, field in fields:
                if well in unmapped:
                    records.append(
                        {
                            "plate": plate.name,
                            "well": well,
                            "field": field,
                            "status": "skipped",
                            "n_cells": 0,
                            "reason": f"well {well} is not in the plate map",
                        }
                    )
                    continue
                part = plate_parts / _part_name(well, field)
                if part.exists():
                    try:
                        records.append(_read_part_record(part))
                        continue
                    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
                        logger.warning("part file '%s' is unreadable or corrupt (%s); redoing that "
                                       "field", part, err)
                        part.unlink()
                files = planes = None
                if field_rows is not None:
                    files = plate.files.iloc[field_rows[(well, field)]].to_dict("records")
                    planes = plate.planes
                tasks.append(
                    {
                        "folder": str(plate.folder),
                        "plate": plate.name,
                        "well": well,
                        "files": files,
                        "planes": planes,
                        "field": field,
                        "channel_ids": ids,
                        "channel_names": names,
                        "calibration": str(cal_path),
                        "config": cfg.model_dump(),
                        "typical_area": typical_area,
                        "part": str(part),
                    }
                )
        n_done = sum(r["status"] != "skipped" for r in records)
        if n_done:
            logger.info("resuming: %d field(s) already finished, %d to do", n_done, len(tasks))
        records += _run_tasks(tasks, cfg.n_workers, dask=cfg.dask, dask_processes=cfg.dask_processes)

        result = _assemble(out, parts, per_plate, records, table, cfg, channel_names)
    except Exception:
        # an error that finished no field leaves nothing behind; an interrupted run
        # (Ctrl-C, kill) keeps its calibration and finished fields to resume from
        if not any(parts.glob("*/*_f[0-9]*.npz")):
            shutil.rmtree(parts, ignore_errors=True)
        raise
    if not keep_parts:
        shutil.rmtree(parts, ignore_errors=True)
    return result


def _as_utf8(text: str) -> str:
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _read_part_record(part: Path) -> dict:
    """The QC record of a finished field, after checking every member's CRC-32 (a part
    truncated or with flipped bytes from an earlier crash or a bad disk is redone)."""
    with zipfile.ZipFile(part) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"member {bad!r} fails its CRC-32 check")
    with np.load(part, allow_pickle=False) as z:
        return json.loads(str(z["record"]))


def _run_tasks(tasks: list[dict], n_workers: int, *, dask: bool | str | None = None,
               dask_processes: bool = True) -> list[dict]:
    if not tasks:
        return []
    if dask not in (None, False):
        from .._dask import require_distributed

        require_distributed()  # a clear error before any field is processed
    bar = progress(total=len(tasks), desc="fields", unit="field")
    records = []
    try:
        if dask not in (None, False):
            from .._dask import dask_client, dask_map

            # Each task writes its own part file (atomically) and returns a small record;
            # crops never travel through the scheduler.
            with dask_client(dask, n_workers=max(1, n_workers),
                             processes=dask_processes) as client:
                for _, record in dask_map(client, process_field, tasks):
                    records.append(record)
                    bar.update(1)
            return records
        if n_workers <= 1:
            for task in tasks:
                records.append(process_field(task))
                bar.update(1)
            return records
        import concurrent.futures as cf
        import multiprocessing as mp

        # fork starts workers fast and works from any __main__ (scripts, notebooks, stdin);
        # workers only run numpy/scipy/scikit-image code.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        # Bounded memory: at most 2 fields per worker are queued or in flight.
        with cf.ProcessPoolExecutor(n_workers, mp_context=mp.get_context(method)) as pool:
            pending: set = set()
            queue = iter(tasks)
            for task in queue:
                pending.add(pool.submit(process_field, task))
                if len(pending) >= 2 * n_workers:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        records.append(fut.result())
                        bar.update(1)
            for fut in cf.as_completed(pending):
                records.append(fut.result())
                bar.update(1)
        return records
    finally:
        bar.close()


def _assemble(
    out: Path,
    parts: Path,
    per_plate,
    records: list[dict],
    table: pd.DataFrame | None,
    cfg: IngestConfig,
    channel_names: list[str],
) -> IngestResult:
    from ..crops import H5scWriter
    from .death import call_dead, death_rates

    qc = pd.DataFrame(records).sort_values(["plate", "well", "field"]).reset_index(drop=True)

    obs_parts, feats, part_files, feature_names = [], [], [], None
    for rec in qc.itertuples():
        if rec.status == "skipped" or rec.n_cells == 0:
            continue
        part = parts / rec.plate / _part_name(rec.well, int(rec.field))
        with np.load(part, allow_pickle=False) as z:
            labels, centres, border = z["labels"], z["centres"], z["touches_border"]
            feats.append(z["features"])
            feature_names = [str(x) for x in z["feature_names"]]
        extra = _map_row(table, rec.plate, rec.well) or {}
        frame = pd.DataFrame(
            {
                "plate": rec.plate,
                "well": rec.well,
                "field": int(rec.field),
                "cell_label": labels.astype(int),
                "x": centres[:, 1],
                "y": centres[:, 0],
                "touches_border": border.astype(bool),
                "qc_flags": getattr(rec, "qc_flags", "") or "",
            }
        )
        for k, v in extra.items():
            frame[k] = v
        obs_parts.append(frame)
        part_files.append(part)
    n_cells = int(sum(len(f) for f in obs_parts))
    if n_cells == 0:
        raise ValueError(
            f"no cells were found in any field (QC table: "
            f"{qc['status'].value_counts().to_dict()}); nothing written to "
            f"'{out}'. First reasons: {list(qc['reason'].head(3))}"
        )
    obs = pd.concat(obs_parts, ignore_index=True)
    obs.index = [
        f"{p}_{w}_f{f}_c{c}"
        for p, w, f, c in zip(
            obs["plate"], obs["well"], obs["field"], obs["cell_label"], strict=True
        )
    ]
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str).astype("category")
    measure = np.concatenate(feats).astype(np.float32)

    uns: dict[str, Any] = {
        "X_measure_names": np.array(feature_names, dtype=object),
        "ingest": {
            "fingerprint": cfg.fingerprint(),
            "config": json.dumps(cfg.model_dump(), default=str),
        },
    }
    thresholds: dict = {}
    death_key = f"{cfg.death_channel}_nucleus_mean"
    if cfg.death_channel is not None and death_key in feature_names:
        intensity = measure[:, feature_names.index(death_key)]
        dead, thresholds = call_dead(
            intensity,
            obs["plate"].astype(str).to_numpy(),
            threshold=cfg.death_threshold,
            method=cfg.death_method,
        )
        obs["death_intensity"] = intensity
        obs["dead"] = dead
        uns["death_thresholds"] = {str(k): float(v) for k, v in thresholds.items()}
        uns["death_rates_well"] = death_rates(obs, by=("plate", "well"))
        uns["death_rates_field"] = death_rates(obs, by=("plate", "well", "field"))
        for k in ("death_rates_well", "death_rates_field"):
            for col in ("plate", "well"):
                uns[k][col] = uns[k][col].astype(str)
    qc_table = qc.copy()
    for col in qc_table.columns:
        if qc_table[col].dtype == object:
            # reasons quote file names, which may not be UTF-8: keep their bytes as \xNN
            qc_table[col] = qc_table[col].fillna("").astype(str).map(_as_utf8)
    uns["qc"] = qc_table

    names = channel_names + (["mask"] if cfg.mask_channel else [])
    with H5scWriter(
        out, obs, channel_names=names, crop_size=cfg.crop_size, uns=uns, obsm={"X_measure": measure}
    ) as writer:
        for part in progress(part_files, desc="writing", unit="field"):
            with np.load(part, allow_pickle=False) as z:
                writer.write(z["crops"])
    qc_csv = out.with_name(out.stem + ".qc.csv")
    atomic_write_text(qc_csv, qc_table.to_csv(index=False))
    n_skipped = int((qc["status"] != "ok").sum())
    logger.info(
        "wrote %d cells from %d fields to %s (%d field(s) skipped; QC table %s)",
        n_cells,
        len(qc),
        out,
        n_skipped,
        qc_csv,
    )
    return IngestResult(out, n_cells, len(qc), n_skipped, qc_table, thresholds, names)


def ingest_field_arrays(
    image: np.ndarray,
    channel_names: Sequence[str],
    *,
    nucleus_channel: str = "nucleus",
    cytoplasm_channel: str | None = "mito",
    crop_size: int = 128,
    border: str = "pad",
    **seg_params,
) -> dict:
    """The per-field core on an in-memory ``(C, H, W)`` image (already projected and
    corrected): segmentation, crops and measurements, without files.

    Returns a dict with ``nuclei``, ``cells`` (label images), ``crops`` (CellCrops),
    ``features`` and ``feature_names``.
    """
    from .cells import extract_crops, measure_cells
    from .segmentation import segment_cells, segment_nuclei

    image = np.asarray(image, np.float32)
    names = list(channel_names)
    if nucleus_channel not in names:
        raise ValueError(f"nucleus channel {nucleus_channel!r} not in {names}")
    nuclei = segment_nuclei(image[names.index(nucleus_channel)], **seg_params)
    cyto = image[names.index(cytoplasm_channel)] if cytoplasm_channel in names else None
    cells = segment_cells(nuclei, cyto)
    crops = extract_crops(image, nuclei, cells, size=crop_size, border=border)
    features, feature_names = measure_cells(image, nuclei, cells, names, labels=crops.labels)
    return {
        "nuclei": nuclei,
        "cells": cells,
        "crops": crops,
        "features": features,
        "feature_names": feature_names,
    }
