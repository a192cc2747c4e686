"""Field quality control: focus, saturation, cell count, empty and debris-only fields."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .preprocess import focus_score

__all__ = ["FieldQC", "QCThresholds", "field_qc", "saturation_fraction"]


@dataclass(frozen=True)
class QCThresholds:
    """When a field is flagged.

    min_focus_ratio : out of focus when the focus score is below this fraction of the
        plate's median focus.
    max_saturation : too saturated when more than this fraction of nucleus pixels sit at
        the detector maximum.
    min_cells : a field with fewer segmented nuclei is "empty".
    debris_area_ratio : "debris" when the median nucleus area is below this fraction of
        the plate's typical area... or the mean object solidity is below ``min_solidity``.
    skip_flags : flags that drop the field from the output (others are only recorded).
    """

    min_focus_ratio: float = 0.25
    max_saturation: float = 0.05
    min_cells: int = 1
    debris_area_ratio: float = 0.2
    min_solidity: float = 0.6
    skip_flags: tuple[str, ...] = ("empty", "out_of_focus", "debris")


@dataclass(frozen=True)
class FieldQC:
    """QC measurements and flags of one field."""

    focus: float
    saturation: float
    n_cells: int
    median_nucleus_area: float
    mean_solidity: float
    flags: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict:
        d = asdict(self)
        d["flags"] = ";".join(self.flags)
        return d


def saturation_fraction(raw: np.ndarray, max_value: float | None = None) -> float:
    """Fraction of pixels at the detector maximum (the dtype maximum for integer images)."""
    raw = np.asarray(raw)
    if max_value is None:
        if np.issubdtype(raw.dtype, np.integer):
            max_value = float(np.iinfo(raw.dtype).max)
        else:
            return 0.0
    return float((raw >= max_value).mean()) if raw.size else 0.0


def field_qc(
    nucleus_raw: np.ndarray,
    nuclei: np.ndarray,
    *,
    focus_reference: float = np.nan,
    typical_area: float = np.nan,
    max_value: float | None = None,
    thresholds: QCThresholds | None = None,
) -> FieldQC:
    """QC of one field from its (projected, uncorrected) nucleus image and nucleus labels.

    Parameters
    ----------
    nucleus_raw : (H, W) projected nucleus channel in detector units.
    nuclei : (H, W) int nucleus labels.
    focus_reference : the plate's median focus score (NaN: no focus flag).
    typical_area : the plate's typical nucleus area (NaN: use absolute 20-pixel floor).
    max_value : detector maximum (default: dtype maximum of ``nucleus_raw``).
    """
    thresholds = thresholds or QCThresholds()
    focus = focus_score(nucleus_raw)
    saturation = saturation_fraction(nucleus_raw, max_value)
    n = int(nuclei.max())
    flags = []
    median_area, solidity = float("nan"), float("nan")
    if n < thresholds.min_cells:
        flags.append("empty")
    if n:
        from skimage.measure import regionprops_table

        props = regionprops_table(nuclei, properties=("area", "solidity"))
        median_area = float(np.median(props["area"]))
        solidity = float(np.mean(props["solidity"]))
        floor = thresholds.debris_area_ratio * typical_area if np.isfinite(typical_area) else 20
        if median_area < floor or solidity < thresholds.min_solidity:
            flags.append("debris")
    if np.isfinite(focus_reference) and focus < thresholds.min_focus_ratio * focus_reference:
        flags.append("out_of_focus")
    if saturation > thresholds.max_saturation:
        flags.append("saturated")
    return FieldQC(focus, saturation, n, median_area, solidity, tuple(flags))
