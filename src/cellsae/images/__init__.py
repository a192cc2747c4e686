"""cellsae.images: plate images → single-cell crops, measurements and death calls.

Lazy plate reading (:class:`PlateSource`, :func:`discover_plates`), per-field corrections
(:func:`project`, :class:`PlateCalibration`), QC (:func:`field_qc`), segmentation
(:func:`segment_nuclei`, :func:`segment_cells`, :func:`register_backend`), crops and
measurements (:func:`extract_crops`, :func:`measure_cells`), death calls
(:func:`call_dead`, :func:`death_rates`) and the whole run (:func:`ingest`).
"""

from .cells import CellCrops, count_puncta, extract_crops, measure_cells, nucleus_centres
from .death import call_dead, death_rates, death_threshold
from .io import (
    PATTERN_PRESETS,
    CorruptImageError,
    FilenamePattern,
    ImageReadError,
    MissingImageError,
    OmeZarrPlate,
    PlateSource,
    ShapeMismatchError,
    discover_plates,
    open_plate,
    parse_channel_map,
    read_image,
    read_ome_zarr,
    read_platemap,
    well_name,
)
from .pipeline import IngestConfig, IngestResult, ingest, ingest_field_arrays, process_field
from .preprocess import (
    PlateCalibration,
    correct_field,
    estimate_flatfield,
    focus_score,
    normalize_percentile,
    project,
    subtract_background,
)
from .qc import FieldQC, QCThresholds, field_qc, saturation_fraction
from .segmentation import (
    NucleusParams,
    available_backends,
    register_backend,
    segment_cells,
    segment_nuclei,
)
from .toy import make_toy_field, make_toy_plate
from .scoring import score_ingestion
from .tiles import TileConfig, TileIngestResult, ingest_tiles, tile_grid, cut_tiles, tile_qc, tile_death_rates
