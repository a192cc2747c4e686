"""Reading plates: folders of per-channel/per-z TIFFs, OME-TIFF and OME-Zarr stacks,
plate maps and channel maps.

Everything is lazy: a :class:`PlateSource` indexes file names once and reads one field
(``(C, Z, H, W)``) at a time, so a plate never sits in memory.

File names are parsed by a :class:`FilenamePattern`, built from a preset name
(``"phenix"``, ``"metaxpress"``, ``"cellvoyager"``), a template with placeholders
(``"r{row}c{col}f{field}p{plane}-ch{channel}sk1fk1fl1.tiff"``) or a regular expression
with named groups (``row``/``col`` or ``well``, ``field``, and for per-plane files
``channel`` and ``plane``).
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..integrity import safe_join

logger = logging.getLogger(__name__)

__all__ = [
    "CorruptImageError",
    "FilenamePattern",
    "ImageReadError",
    "MissingImageError",
    "OmeZarrPlate",
    "PATTERN_PRESETS",
    "PlateSource",
    "open_plate",
    "ShapeMismatchError",
    "discover_plates",
    "parse_channel_map",
    "read_image",
    "read_ome_zarr",
    "read_platemap",
    "well_name",
]


class ImageReadError(ValueError):
    """An image file could not be used; the message names the file and what to do."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = None if path is None else str(path)


class CorruptImageError(ImageReadError):
    """A file exists but cannot be decoded (corrupt or truncated)."""


class MissingImageError(ImageReadError):
    """A channel or z-plane of a field has no file."""


class ShapeMismatchError(ImageReadError):
    """Channels or planes of one field have different image shapes."""


# -- wells ----------------------------------------------------------------------------------

_WELL_RE = re.compile(r"^\s*([A-Za-z]{1,2})\s*0*(\d{1,3})\s*$")


def _row_letters(row: int) -> str:
    if row < 1:
        raise ValueError(f"plate rows are numbered from 1, got {row}")
    letters = ""
    while row:
        row, rem = divmod(row - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def well_name(row: int, col: int) -> str:
    """``well_name(2, 3) == "B03"`` (rows numbered from 1 = A)."""
    return f"{_row_letters(int(row))}{int(col):02d}"


def parse_well(well: str) -> tuple[int, int]:
    """``parse_well("B03") == (2, 3)``; raises ValueError for anything else."""
    m = _WELL_RE.match(str(well))
    if not m:
        raise ValueError(
            f"not a well name: {well!r} (expected a row letter and a column number, e.g. 'B03')"
        )
    row = 0
    for ch in m.group(1).upper():
        row = row * 26 + (ord(ch) - ord("A") + 1)
    return row, int(m.group(2))


def _normalise_well(well: str) -> str:
    return well_name(*parse_well(well))


# -- file-name patterns -----------------------------------------------------------------------

PATTERN_PRESETS: dict[str, str] = {
    # PerkinElmer/Revvity Opera Phenix and Operetta CLS (Harmony export).
    "phenix": r"r(?P<row>\d+)c(?P<col>\d+)f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)"
    r"sk\d+fk\d+fl\d+\.tiff?$",
    # Molecular Devices ImageXpress / MetaXpress: A01_s1_w1.tif, optional _z per plane.
    "metaxpress": r"(?:.*_)?(?P<well>[A-Pa-p]\d{2})_s(?P<field>\d+)_w(?P<channel>\d+)"
    r"(?:_z(?P<plane>\d+))?(?:_[0-9A-Fa-f-]{36})?\.tiff?$",
    # Yokogawa CellVoyager: <name>_B03_T0001F001L01A01Z01C01.tif
    "cellvoyager": r"(?:.*_)?(?P<well>[A-Pa-p]\d{2})_T\d+F(?P<field>\d+)L\d+A\d+"
    r"Z(?P<plane>\d+)C(?P<channel>\d+)\.tiff?$",
    # One multichannel (and possibly multi-z) stack per field: B03_f01.ome.tif / .zarr
    "stack": r"(?P<well>[A-Pa-p]\d{1,2})_f(?:ield)?(?P<field>\d+)\.(?:ome\.)?(?:tiff?|zarr)$",
}
# The paper's reader (Park et al. 2026, 01_MIP_generation.py): the same Harmony naming,
# parsed by r<row>c<col>f<field>p<plane>-ch<channel> with any suffix before the extension.
PATTERN_PRESETS["paper"] = (
    r"r(?P<row>\d+)c(?P<col>\d+)f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)[^/\\]*\.tiff?$"
)
PATTERN_PRESETS["operetta"] = PATTERN_PRESETS["phenix"]
PATTERN_PRESETS["imagexpress"] = PATTERN_PRESETS["metaxpress"]

_PLACEHOLDERS = {
    "row": r"(?P<row>\d+)",
    "col": r"(?P<col>\d+)",
    "well": r"(?P<well>[A-Za-z]{1,2}\d{1,3})",
    "field": r"(?P<field>\d+)",
    "plane": r"(?P<plane>\d+)",
    "channel": r"(?P<channel>\w+?)",
    "plate": r"(?P<plate>[^/]+?)",
}


@dataclass(frozen=True)
class FilenamePattern:
    """How a file name encodes well, field, channel and z-plane.

    Build with :meth:`from_spec`. ``per_plane`` is True when each file holds one 2-D
    plane of one channel (the file name then has ``channel`` and usually ``plane``);
    otherwise each file is a whole field stack (OME-TIFF/OME-Zarr/TIFF).
    """

    regex: str
    name: str = "custom"

    @classmethod
    def from_spec(cls, spec: str | FilenamePattern) -> FilenamePattern:
        """A preset name, a template with ``{row}{col}{well}{field}{plane}{channel}``
        placeholders, or a regular expression with those named groups."""
        if isinstance(spec, FilenamePattern):
            return spec
        spec = str(spec)
        if spec.lower() in PATTERN_PRESETS:
            return cls(PATTERN_PRESETS[spec.lower()], spec.lower())
        if "(?P<" in spec:
            regex = spec
        elif "{" in spec:
            parts = []
            for literal, field, _fmt, _ in string.Formatter().parse(spec):
                parts.append(re.escape(literal))
                if field is None:
                    continue
                if field not in _PLACEHOLDERS:
                    raise ValueError(
                        f"unknown placeholder {{{field}}} in file-name pattern "
                        f"{spec!r}; allowed: {sorted(_PLACEHOLDERS)}"
                    )
                parts.append(_PLACEHOLDERS[field])
            regex = "".join(parts) + "$"
        else:
            raise ValueError(
                f"file-name pattern {spec!r} is neither a preset "
                f"({sorted(PATTERN_PRESETS)}), a template with placeholders "
                "like {row}, nor a regular expression with named groups"
            )
        try:
            compiled = re.compile(regex)
        except re.error as err:
            raise ValueError(
                f"file-name pattern {spec!r} is not a valid regular expression: {err}"
            ) from None
        groups = set(compiled.groupindex)
        if not ({"well"} <= groups or {"row", "col"} <= groups):
            raise ValueError(
                f"file-name pattern {spec!r} must identify the well: give a "
                "'well' group or both 'row' and 'col'"
            )
        return cls(regex, "custom")

    @property
    def compiled(self) -> re.Pattern:
        return re.compile(self.regex)

    @property
    def per_plane(self) -> bool:
        return "channel" in self.compiled.groupindex

    def match(self, filename: str) -> dict | None:
        """Parse a file name; None when it does not match."""
        m = self.compiled.search(filename)
        if m is None:
            return None
        g = m.groupdict()
        if g.get("well"):
            row, col = parse_well(g["well"])
        else:
            row, col = int(g["row"]), int(g["col"])
        out = {
            "row": row,
            "col": col,
            "well": well_name(row, col),
            "field": int(g["field"]) if g.get("field") else 1,
        }
        if "channel" in g:
            ch = g["channel"]
            out["channel"] = int(ch) if ch is not None and ch.isdigit() else ch
            out["plane"] = int(g["plane"]) if g.get("plane") else 1
        return out


# -- single images --------------------------------------------------------------------------


def _tiff_read(path: Path) -> tuple[np.ndarray, str]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
    except FileNotFoundError:
        raise MissingImageError(f"image file not found: '{path}'", path) from None
    except Exception as err:  # noqa: BLE001 - tifffile raises many types for bad files
        raise CorruptImageError(
            f"cannot read TIFF '{path}': {type(err).__name__}: {err}. "
            "The file is corrupt or truncated; re-export it or remove it "
            "(the field will then be skipped and recorded in the QC table)",
            path,
        ) from None
    return data, axes


def read_ome_zarr(path: str | Path, *, level: int = 0) -> tuple[np.ndarray, str]:
    """Read one resolution level of an OME-Zarr image as ``(array, axes)``.

    ``axes`` is a string such as ``"CZYX"`` from the multiscales metadata (``"TCZYX"``
    when absent).
    """
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        meta = attrs.get("ome", attrs)
        multiscales = meta.get("multiscales")
        if not multiscales:
            raise KeyError("no 'multiscales' metadata")
        ms = multiscales[0]
        datasets = ms["datasets"]
        if level >= len(datasets):
            raise ValueError(f"'{path}' has {len(datasets)} resolution levels, asked {level}")
        array = np.asarray(group[datasets[level]["path"]][...])
        axes_meta = ms.get("axes")
        if axes_meta:
            axes = "".join(
                (a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in axes_meta
            )
        else:
            axes = "TCZYX"[-array.ndim :]
    except (KeyError, ValueError, OSError) as err:
        raise CorruptImageError(
            f"cannot read OME-Zarr '{path}': {err}; expected an OME-NGFF "
            "image group with 'multiscales' metadata",
            path,
        ) from None
    except Exception as err:  # noqa: BLE001 - zarr raises many types for bad stores
        raise CorruptImageError(
            f"cannot read OME-Zarr '{path}': {type(err).__name__}: {err}", path
        ) from None
    return array, axes


def read_image(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a TIFF, OME-TIFF or OME-Zarr image as ``(array, axes)`` (e.g. ``"CZYX"``)."""
    path = Path(path)
    if not path.exists():
        raise MissingImageError(f"image file not found: '{path}'", path)
    name = path.name.lower()
    if name.endswith(".zarr") or (
        path.is_dir() and ((path / ".zattrs").exists() or (path / "zarr.json").exists())
    ):
        return read_ome_zarr(path)
    return _tiff_read(path)


def to_czyx(array: np.ndarray, axes: str, *, path: str | Path = "") -> np.ndarray:
    """Reorder an image with named axes to ``(C, Z, Y, X)``, dropping a length-1 T/S."""
    axes = axes.upper().replace("S", "C") if "C" not in axes.upper() else axes.upper()
    if len(axes) != array.ndim:
        raise ShapeMismatchError(f"'{path}': axes {axes!r} do not match shape {array.shape}", path)
    for ax in list(axes):
        if ax not in "CZYX":
            i = axes.index(ax)
            if array.shape[i] != 1:
                if ax == "Q" and "Z" not in axes:  # tifffile's unknown axis: treat as Z
                    axes = axes.replace("Q", "Z")
                    continue
                raise ShapeMismatchError(
                    f"'{path}': axis {ax} has length {array.shape[i]}; "
                    "only single time points are supported",
                    path,
                )
            array = np.take(array, 0, axis=i)
            axes = axes.replace(ax, "")
    for ax in "CZ":
        if ax not in axes:
            array = array[None]
            axes = ax + axes
    return np.transpose(array, [axes.index(a) for a in "CZYX"])


# -- plates ---------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    files = []
    for p in sorted(folder.rglob("*")):
        n = p.name.lower()
        if p.is_file() and (n.endswith(".tif") or n.endswith(".tiff")):
            files.append(p)
        elif p.is_dir() and n.endswith(".zarr"):
            files.append(p)
    # Nothing inside a .zarr store is an image of its own.
    return [p for p in files if not any(a.name.lower().endswith(".zarr") for a in p.parents)]


class PlateSource:
    """Lazy access to the fields of one plate folder.

    Parameters
    ----------
    folder : the plate folder (searched recursively for ``.tif/.tiff/.zarr``).
    pattern : a :class:`FilenamePattern` spec (preset, template or regex).
    name : plate name (default: the folder name).

    Attributes
    ----------
    files : DataFrame, one row per matched file (well, row, col, field, channel, plane, path).
    channels : channel identifiers found (ints for numbered channels), for per-plane layouts.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        pattern: str | FilenamePattern = "phenix",
        name: str | None = None,
    ):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"plate folder not found: '{self.folder}'")
        self.pattern = FilenamePattern.from_spec(pattern)
        self.name = name or self.folder.name
        rows, unmatched = [], 0
        for path in _image_files(self.folder):
            parsed = self.pattern.match(path.name)
            if parsed is None:
                unmatched += 1
                continue
            parsed["path"] = str(path)
            rows.append(parsed)
        if unmatched:
            logger.debug(
                "%s: %d image files did not match pattern %s",
                self.folder,
                unmatched,
                self.pattern.name,
            )
        cols = ["well", "row", "col", "field", "path"]
        if self.pattern.per_plane:
            cols[4:4] = ["channel", "plane"]
        self.files = pd.DataFrame(rows, columns=cols)
        if self.pattern.per_plane and len(self.files):
            dup = self.files.duplicated(["well", "field", "channel", "plane"], keep=False)
            if dup.any():
                first = self.files[dup].iloc[0]
                raise ValueError(
                    f"plate '{self.folder}': several files for well {first.well} "
                    f"field {first.field} channel {first.channel} plane "
                    f"{first.plane}; the file-name pattern must tell them apart"
                )
        self.n_unmatched = unmatched

    @classmethod
    def from_table(
        cls,
        folder: str | Path,
        files: pd.DataFrame,
        *,
        pattern: str | FilenamePattern = "phenix",
        name: str | None = None,
        planes: Sequence[int] | None = None,
    ) -> PlateSource:
        """A source over an already indexed file table (no folder scan), e.g. the rows of
        one field handed to a worker process; ``planes`` are the plate's z-planes."""
        self = cls.__new__(cls)
        self.folder = Path(folder)
        self.pattern = FilenamePattern.from_spec(pattern)
        self.name = name or self.folder.name
        self.files = files.reset_index(drop=True)
        self.n_unmatched = 0
        self._planes = None if planes is None else sorted(int(p) for p in planes)
        return self

    def __repr__(self) -> str:
        return (
            f"PlateSource({str(self.folder)!r}, pattern={self.pattern.name!r}, "
            f"fields={len(self.fields())})"
        )

    @property
    def per_plane(self) -> bool:
        """True when each file holds one plane of one channel."""
        return self.pattern.per_plane

    @property
    def channels(self) -> list:
        if not self.pattern.per_plane or not len(self.files):
            return []
        return sorted(self.files["channel"].unique().tolist(), key=lambda c: (str(type(c)), c))

    @property
    def planes(self) -> list[int]:
        if getattr(self, "_planes", None) is not None:
            return self._planes
        if not self.pattern.per_plane or not len(self.files):
            return []
        return sorted(int(p) for p in self.files["plane"].unique())

    def fields(self) -> list[tuple[str, int]]:
        """``(well, field)`` pairs in plate order."""
        if not len(self.files):
            return []
        keys = self.files[["row", "col", "well", "field"]].drop_duplicates()
        keys = keys.sort_values(["row", "col", "field"])
        return [(str(w), int(f)) for w, f in zip(keys["well"], keys["field"], strict=True)]

    def read_field(self, well: str, field: int, channels: Sequence | None = None) -> np.ndarray:
        """Read one field as ``(C, Z, H, W)`` in the order of ``channels``.

        ``channels`` lists channel identifiers as found in file names (per-plane layouts)
        or channel indices into the stack (stack layouts); None reads all.

        Raises
        ------
        MissingImageError : a channel or z-plane file is missing (the message names it).
        CorruptImageError : a file cannot be decoded.
        ShapeMismatchError : channels/planes differ in shape.
        """
        well = _normalise_well(well)
        sel = self.files[(self.files["well"] == well) & (self.files["field"] == int(field))]
        if not len(sel):
            raise MissingImageError(
                f"plate '{self.folder}' has no images for well {well} field {field}"
            )
        if not self.pattern.per_plane:
            path = Path(sel["path"].iloc[0])
            array, axes = read_image(path)
            stack = to_czyx(array, axes, path=path)
            if channels is not None:
                idx = [int(c) for c in channels]
                if max(idx, default=-1) >= stack.shape[0] or min(idx, default=0) < 0:
                    raise MissingImageError(
                        f"'{path}' has {stack.shape[0]} channels; asked for channel indices {idx}",
                        path,
                    )
                stack = stack[idx]
            return stack
        channels = self.channels if channels is None else list(channels)
        planes = self.planes
        out = None
        shape_ref: tuple | None = None
        ref_path = ""
        for ci, ch in enumerate(channels):
            ch_rows = sel[sel["channel"].astype(str) == str(ch)]
            if not len(ch_rows):
                raise MissingImageError(
                    f"plate '{self.folder}': channel {ch} is missing for well {well} field "
                    f"{field} (found channels {sorted(sel['channel'].astype(str).unique())}); "
                    f"expected a file like '{self._example_name(well, field, ch, planes[0])}'"
                )
            have = set(int(p) for p in ch_rows["plane"])
            missing = [p for p in planes if p not in have]
            if missing:
                raise MissingImageError(
                    f"plate '{self.folder}': well {well} field {field} channel {ch} lacks "
                    f"z-plane(s) {missing} (expected e.g. "
                    f"'{self._example_name(well, field, ch, missing[0])}')"
                )
            for zi, (_, row) in enumerate(ch_rows.sort_values("plane").iterrows()):
                array, axes = read_image(row["path"])
                plane = np.squeeze(array)
                if plane.ndim != 2:
                    raise ShapeMismatchError(
                        f"'{row['path']}' holds an array of shape "
                        f"{array.shape}; per-plane files must be 2-D",
                        row["path"],
                    )
                if shape_ref is None:
                    shape_ref, ref_path = plane.shape, row["path"]
                    out = np.empty((len(channels), len(planes), *plane.shape), plane.dtype)
                elif plane.shape != shape_ref:
                    raise ShapeMismatchError(
                        f"'{row['path']}' has shape {plane.shape} but "
                        f"'{ref_path}' has {shape_ref}; all channels and "
                        "planes of a field must match",
                        row["path"],
                    )
                out[ci, zi] = plane
        if out is None:
            raise MissingImageError(f"no channels requested for well {well} field {field}")
        return out

    def _example_name(self, well: str, field: int, channel, plane: int) -> str:
        if self.pattern.name in ("phenix", "operetta"):
            row, col = parse_well(well)
            return f"r{row:02d}c{col:02d}f{field:02d}p{plane:02d}-ch{channel}sk1fk1fl1.tiff"
        return (
            f"<file matching {self.pattern.name} pattern: well {well}, field {field}, "
            f"channel {channel}, plane {plane}>"
        )


class OmeZarrPlate:
    """Lazy access to an OME-NGFF (OME-Zarr) high-content plate: ``plate.zarr/<row>/<col>/
    <field>`` image groups described by the ``plate`` and ``well`` metadata.

    Same interface as :class:`PlateSource` (``fields()``, ``read_field()``); channels
    are addressed by index into the image's channel axis.
    """

    per_plane = False
    channels: list = []

    def __init__(self, path: str | Path, *, name: str | None = None):
        import zarr

        self.folder = Path(path)
        self.name = name or self.folder.name.removesuffix(".zarr")
        try:
            self._group = zarr.open_group(str(self.folder), mode="r")
            attrs = dict(self._group.attrs)
            plate = attrs.get("ome", attrs)["plate"]
        except Exception as err:  # noqa: BLE001 - zarr raises many types for bad stores
            raise CorruptImageError(
                f"'{self.folder}' is not an OME-Zarr plate (no readable 'plate' metadata: {err})",
                self.folder,
            ) from None
        self._fields: dict[tuple[str, int], str] = {}
        for well in plate.get("wells", []):
            wpath = str(well["path"])
            safe_join(self.folder, wpath, what=f"OME-Zarr plate '{self.folder}' well path")
            row_name, col_name = wpath.split("/")[-2:]
            well_id = _normalise_well(f"{row_name}{col_name}")
            try:
                wattrs = dict(self._group[wpath].attrs)
                images = wattrs.get("ome", wattrs)["well"]["images"]
            except (KeyError, TypeError) as err:
                raise CorruptImageError(
                    f"'{self.folder}/{wpath}': missing 'well' metadata ({err})", self.folder
                ) from None
            for i, image in enumerate(images, start=1):
                rel = f"{wpath}/{image['path']}"
                # the paths come from the plate's own metadata: a hostile or broken plate
                # must not make us read outside its folder
                safe_join(self.folder, rel, what=f"OME-Zarr plate '{self.folder}' image path")
                self._fields[(well_id, i)] = rel

    def __repr__(self) -> str:
        return f"OmeZarrPlate({str(self.folder)!r}, fields={len(self._fields)})"

    @property
    def files(self) -> pd.DataFrame:
        return pd.DataFrame(
            [{"well": w, "field": f, "path": p} for (w, f), p in self._fields.items()]
        )

    def fields(self) -> list[tuple[str, int]]:
        return sorted(self._fields, key=lambda k: (*parse_well(k[0]), k[1]))

    def read_field(self, well: str, field: int, channels: Sequence | None = None) -> np.ndarray:
        key = (_normalise_well(well), int(field))
        if key not in self._fields:
            raise MissingImageError(
                f"OME-Zarr plate '{self.folder}' has no field {field} in well {key[0]}", self.folder
            )
        path = self.folder / self._fields[key]
        array, axes = read_ome_zarr(path)
        stack = to_czyx(array, axes, path=path)
        if channels is not None:
            idx = [int(c) for c in channels]
            if max(idx, default=-1) >= stack.shape[0] or min(idx, default=0) < 0:
                raise MissingImageError(
                    f"'{path}' has {stack.shape[0]} channels; asked for channel indices {idx}", path
                )
            stack = stack[idx]
        return stack


def _is_ome_zarr_plate(path: Path) -> bool:
    if not path.is_dir():
        return False
    for meta in (".zattrs", "zarr.json"):
        f = path / meta
        if f.exists():
            try:
                text = f.read_text(encoding="utf-8")
            except OSError:
                return False
            return '"plate"' in text
    return False


def open_plate(
    folder: str | Path, *, pattern: str | FilenamePattern = "phenix", name: str | None = None
) -> PlateSource | OmeZarrPlate:
    """An OME-Zarr plate when ``folder`` is one, else a :class:`PlateSource`."""
    folder = Path(folder)
    if _is_ome_zarr_plate(folder):
        return OmeZarrPlate(folder, name=name)
    return PlateSource(folder, pattern=pattern, name=name)


def discover_plates(
    root: str | Path, *, pattern: str | FilenamePattern = "phenix"
) -> list[PlateSource | OmeZarrPlate]:
    """Plates under ``root``: ``root`` itself if it is an OME-Zarr plate or its own files
    match ``pattern``; else each OME-Zarr plate or sub-folder with matching files (one
    plate per folder, named after it)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"plate folder not found: '{root}'")
    if _is_ome_zarr_plate(root):
        return [OmeZarrPlate(root)]
    pattern = FilenamePattern.from_spec(pattern)
    direct = [p for p in root.iterdir() if p.is_file() or p.name.lower().endswith(".zarr")]
    if any(pattern.match(p.name) for p in direct):
        return [PlateSource(root, pattern=pattern)]
    plates: list = []
    for sub in sorted(root.iterdir()):
        if not sub.is_dir() or sub.name.startswith("."):
            continue
        if _is_ome_zarr_plate(sub):
            plates.append(OmeZarrPlate(sub))
        elif not sub.name.lower().endswith(".zarr"):
            source = PlateSource(sub, pattern=pattern)
            if len(source.files):
                plates.append(source)
    if not plates:
        raise FileNotFoundError(
            f"no image files matching the '{pattern.name}' file-name pattern under '{root}' "
            f"(regex {pattern.regex!r}) and no OME-Zarr plate; pass --pattern with a preset "
            f"({', '.join(sorted(PATTERN_PRESETS))}) or a template like "
            "'r{row}c{col}f{field}p{plane}-ch{channel}sk1fk1fl1.tiff'"
        )
    return plates


# -- plate maps and channel maps --------------------------------------------------------------

PLATEMAP_COLUMNS = ("well",)


def read_platemap(path: str | Path) -> pd.DataFrame:
    """Read a plate-map CSV: one row per well (per plate when a ``plate`` column exists).

    Required: a ``well`` column (``B03``) or ``row`` and ``col`` columns. Other columns
    (donor, genotype, condition, ...) are carried into ``obs``. Wells are normalised to
    the ``B03`` form.
    """
    from .._utils import require_file

    path = require_file(path, what="plate map")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"plate map '{path}' is not a readable CSV: {err}") from None
    table.columns = [c.strip().lower() for c in table.columns]
    if "well" not in table.columns:
        if {"row", "col"} <= set(table.columns):
            table["well"] = [
                well_name(int(r), int(c)) for r, c in zip(table["row"], table["col"], strict=True)
            ]
        else:
            raise ValueError(
                f"plate map '{path}' needs a 'well' column (e.g. B03) or 'row' and "
                f"'col' columns; found columns {list(table.columns)}"
            )
    try:
        table["well"] = [_normalise_well(w) for w in table["well"]]
    except ValueError as err:
        raise ValueError(f"plate map '{path}': {err}") from None
    rc = np.array([parse_well(w) for w in table["well"]]).reshape(-1, 2)
    table["row"], table["col"] = rc[:, 0], rc[:, 1]
    keys = ["plate", "well"] if "plate" in table.columns else ["well"]
    dup = table.duplicated(keys, keep=False)
    if dup.any():
        raise ValueError(
            f"plate map '{path}' lists {', '.join(table.loc[dup, 'well'].unique()[:5])}"
            f" more than once (per {' and '.join(keys)})"
        )
    return table


def parse_channel_map(spec: str | Sequence[str] | dict, available: Sequence | None = None) -> dict:
    """Map channel identifiers in the files to channel names.

    Accepted forms:

    - ``"1=nucleus,2=death,3=mito,4=lyso"`` (explicit, recommended),
    - ``"nucleus,death,mito,lyso"``: names for the available channels in sorted order
      (ch1, ch2, ...), an empty name skips a channel,
    - a dict ``{1: "nucleus", ...}`` or a list of names.

    Returns
    -------
    dict {channel identifier: name}, in file-channel order.
    """
    if isinstance(spec, dict):
        items = [(k, str(v)) for k, v in spec.items()]
    else:
        parts = (
            [p.strip() for p in spec.split(",")]
            if isinstance(spec, str)
            else [str(p).strip() for p in spec]
        )
        if any("=" in p for p in parts):
            if not all("=" in p for p in parts if p):
                raise ValueError(
                    f"channel map {spec!r} mixes 'id=name' and bare names; use "
                    "one form, e.g. '1=nucleus,2=death,3=mito,4=lyso'"
                )
            items = []
            for p in parts:
                if not p:
                    continue
                key, name = (s.strip() for s in p.split("=", 1))
                items.append((int(key) if key.isdigit() else key, name))
        else:
            ids = list(available) if available is not None else list(range(1, len(parts) + 1))
            if len(parts) > len(ids):
                raise ValueError(
                    f"channel map names {len(parts)} channels ({spec!r}) but only "
                    f"{len(ids)} are present ({ids}); use 'id=name' pairs"
                )
            items = [(i, n) for i, n in zip(ids, parts, strict=False) if n]
    names = [n for _, n in items]
    if any(not n for n in names):
        raise ValueError(f"channel map {spec!r} has an empty channel name")
    if len(set(names)) != len(names):
        raise ValueError(f"channel names must be unique, got {names}")
    if available is not None:
        avail = {str(a) for a in available}
        absent = [k for k, _ in items if str(k) not in avail]
        if absent:
            raise ValueError(
                f"channel(s) {absent} named in the channel map are not in the files "
                f"(found channels {sorted(avail)})"
            )
    return dict(items)
