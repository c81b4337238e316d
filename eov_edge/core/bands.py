"""The spectral canvas: 16 band slots shared by every sensor, and the band sets that fill them.

Every input view becomes a ``(16, H, W)`` float32 array. Each sensor band is first converted to the
physical unit of its slot (surface or top-of-atmosphere reflectance for optical slots, backscatter in
dB for SAR slots, a 0-1 brightness for the thermal slot), then standardized with the slot's
statistics. Absent slots stay 0 (the slot mean after standardization). One patch embedding over the
16 slots therefore serves every sensor, and one encoder graph serves every modality.

This module imports only the standard library and numpy: the runtime on the device and training
share it, and the export manifest records :func:`band_table` so both sides normalize identically.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from eov_edge.core.errors import BandMismatchError, UnknownBandError

Modality = Literal["optical", "sar", "infrared", "multispectral"]
MODALITIES: tuple[Modality, ...] = ("optical", "sar", "infrared", "multispectral")
Transform = Literal["linear", "amplitude_db"]


@dataclass(frozen=True)
class CanvasSlot:
    """One channel of the canvas: what it holds and how it is standardized."""

    name: str
    unit: str
    center_nm: float | None  # None for SAR polarizations
    mean: float  # in `unit`
    std: float  # in `unit`


# Order is part of the model: never reorder, only append (and bump CANVAS_VERSION).
# Means/stds in physical units; optical values are typical Sentinel-2 L2A land statistics.
CANVAS_SLOTS: tuple[CanvasSlot, ...] = (
    CanvasSlot("coastal", "reflectance", 443.0, 0.13, 0.10),
    CanvasSlot("blue", "reflectance", 490.0, 0.12, 0.10),
    CanvasSlot("green", "reflectance", 560.0, 0.12, 0.09),
    CanvasSlot("red", "reflectance", 665.0, 0.12, 0.10),
    CanvasSlot("red_edge_1", "reflectance", 705.0, 0.15, 0.10),
    CanvasSlot("red_edge_2", "reflectance", 740.0, 0.21, 0.10),
    CanvasSlot("red_edge_3", "reflectance", 783.0, 0.24, 0.11),
    CanvasSlot("nir", "reflectance", 842.0, 0.25, 0.11),
    CanvasSlot("nir_narrow", "reflectance", 865.0, 0.26, 0.11),
    CanvasSlot("water_vapour", "reflectance", 945.0, 0.26, 0.11),
    CanvasSlot("cirrus", "reflectance", 1375.0, 0.02, 0.03),
    CanvasSlot("swir_1", "reflectance", 1610.0, 0.20, 0.10),
    CanvasSlot("swir_2", "reflectance", 2190.0, 0.14, 0.09),
    CanvasSlot("sar_vv", "dB", None, -12.5, 5.0),
    CanvasSlot("sar_vh", "dB", None, -20.0, 5.5),
    CanvasSlot("thermal_ir", "brightness", 10900.0, 0.40, 0.20),
)
CANVAS_VERSION = 1
NUM_CANVAS_SLOTS = len(CANVAS_SLOTS)
SLOT_INDEX: dict[str, int] = {slot.name: i for i, slot in enumerate(CANVAS_SLOTS)}


@dataclass(frozen=True)
class BandSpec:
    """One band of a sensor product and how its stored values reach the slot's unit."""

    name: str  # the band's name in the product, e.g. "B8A", "VV"
    slot: str  # a CanvasSlot name
    scale: float = 1.0
    offset: float = 0.0
    transform: Transform = "linear"  # amplitude_db: 20*log10(value*scale + offset)


@dataclass(frozen=True)
class BandSet:
    """The bands of one sensor product, in the order they are stored in a multi-band file."""

    name: str
    modality: Modality
    bands: tuple[BandSpec, ...]
    description: str
    # Some products store a single greyscale band three times (8-bit JPEG of a SAR or thermal frame).
    greyscale_as_rgb: bool = False
    # How the product is usually stored; used only to tell apart band sets with the same band count.
    stored_dtype: str = "uint16"
    # Set where the file holds physical values in this unit once its own scale/offset tags are
    # applied (calibrated products); such a set is chosen by band names or --band-set, never guessed
    # from a band count.
    physical_unit: str | None = None

    @property
    def sensor(self) -> str:
        """The sensor family ("sentinel2" for every Sentinel-2 product): subsets of one family's
        bands are one guess, another family's are another."""
        return self.name.split("_")[0]

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(band.name for band in self.bands)

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(band.slot for band in self.bands)


def _s2(names: tuple[str, ...], offset: float = 0.0) -> tuple[BandSpec, ...]:
    return tuple(BandSpec(n, _S2_SLOTS[n], scale=1e-4, offset=offset) for n in names)


_S2_SLOTS = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "red_edge_1",
    "B06": "red_edge_2", "B07": "red_edge_3", "B08": "nir", "B8A": "nir_narrow",
    "B09": "water_vapour", "B10": "cirrus", "B11": "swir_1", "B12": "swir_2",
}  # fmt: skip
# Photos are contrast-stretched for display: full scale (255) is taken as reflectance 0.3, so a
# typical photo lands near the optical slots' statistics instead of 5 sigma above them.
_RGB8_SCALE = 0.3 / 255
_S2_L2A = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
_S2_L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")

BAND_SETS: dict[str, BandSet] = {
    bs.name: bs
    for bs in (
        BandSet("sentinel2_l2a", "multispectral", _s2(_S2_L2A),
                "Sentinel-2 L2A surface reflectance, 12 bands (no B10), DN/10000, "
                "processing baseline < 04.00 (BigEarthNet, SSL4EO-S12 L2A)"),
        BandSet("sentinel2_l2a_n0400", "multispectral", _s2(_S2_L2A, offset=-0.1),
                "Sentinel-2 L2A, processing baseline >= 04.00 (from 2022-01-25): "
                "BOA_ADD_OFFSET -1000, (DN-1000)/10000 (Major-TOM)"),
        BandSet("sentinel2_l1c", "multispectral", _s2(_S2_L1C),
                "Sentinel-2 L1C top-of-atmosphere reflectance, 13 bands, DN/10000 (EuroSAT MS)"),
        BandSet("sentinel1_db", "sar",
                (BandSpec("VV", "sar_vv"), BandSpec("VH", "sar_vh")),
                "Sentinel-1 GRD backscatter sigma0 in dB, VV and VH (BigEarthNet-S1, SSL4EO-S12)",
                stored_dtype="float32"),
        BandSet("sar_amplitude8", "sar",
                (BandSpec("amplitude", "sar_vv", scale=1 / 255, offset=1 / 510,
                          transform="amplitude_db"),),
                "8-bit SAR amplitude chip (JPEG/PNG, e.g. HRSID); uncalibrated, mapped to dB "
                "relative to full scale", greyscale_as_rgb=True, stored_dtype="uint8"),
        BandSet("thermal8", "infrared", (BandSpec("thermal", "thermal_ir", scale=1 / 255),),
                "8-bit thermal infrared frame (LWIR, e.g. HIT-UAV), brightness 0-1",
                greyscale_as_rgb=True, stored_dtype="uint8"),
        BandSet("thermal_kelvin", "infrared",
                (BandSpec("LWIR", "thermal_ir", scale=1 / 70, offset=-250 / 70),),
                "Calibrated thermal infrared brightness temperature in kelvin, one band described LWIR "
                "(e.g. Landsat ST_B10, ECOSTRESS); 250-320 K mapped linearly onto the 0-1 brightness of "
                "8-bit LWIR frames", stored_dtype="float32", physical_unit="K"),
        BandSet("rgb8", "optical",
                tuple(BandSpec(n, n, scale=_RGB8_SCALE) for n in ("red", "green", "blue")),
                "8-bit RGB photo (JPEG/PNG/TIFF); display brightness mapped onto a typical "
                "reflectance range (DN * 0.3/255), not a calibrated reflectance", stored_dtype="uint8"),
        BandSet("landsat7_etm8", "multispectral",
                tuple(BandSpec(n, s, scale=1 / 255) for n, s in (
                    ("B1", "blue"), ("B2", "green"), ("B3", "red"), ("B4", "nir"),
                    ("B5", "swir_1"), ("B7", "swir_2"))),
                "Landsat-7 ETM+ reflective bands 1-5 and 7 as 8-bit DN (uncalibrated)", stored_dtype="uint8"),
        BandSet("landsat8_sr", "multispectral",
                tuple(BandSpec(n, s, scale=2.75e-5, offset=-0.2) for n, s in (
                    ("SR_B1", "coastal"), ("SR_B2", "blue"), ("SR_B3", "green"), ("SR_B4", "red"),
                    ("SR_B5", "nir"), ("SR_B6", "swir_1"), ("SR_B7", "swir_2"))),
                "Landsat-8/9 Collection 2 Level-2 surface reflectance, bands 1-7"),
    )
}  # fmt: skip

for _bs in BAND_SETS.values():  # a typo in the table must fail at import, not at inference
    for _band in _bs.bands:
        if _band.slot not in SLOT_INDEX:
            raise UnknownBandError(f"band set {_bs.name!r}: slot {_band.slot!r} is not a canvas slot")

MODALITY_INDEX: dict[str, int] = {m: i for i, m in enumerate(MODALITIES)}


def get_band_set(name: str) -> BandSet:
    """Return the band set called ``name``; the error lists the known ones."""
    try:
        return BAND_SETS[name]
    except KeyError:
        raise UnknownBandError(
            f"unknown band set {name!r}; choose one of: {', '.join(sorted(BAND_SETS))}"
        ) from None


_S2_NAME = re.compile(r"(?:^|[_\-./])B0?(\d{1,2})(A?)(?:$|[_\-.])", re.IGNORECASE)


def band_name_from_filename(filename: str) -> str | None:
    """Sentinel-2/1 band name encoded in a file name: ``..._B8A.tif`` -> ``B8A``, ``VV.tif`` -> ``VV``.

    Accepts the spellings of BigEarthNet (``_B01``), SSL4EO (``B1``) and torchgeo (``B08A``).
    """
    stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    upper = stem.upper()
    for pol in ("VV", "VH"):
        if upper == pol or upper.endswith("_" + pol):
            return pol
    match = _S2_NAME.search(stem)
    if match is None:
        return None
    number, narrow = int(match.group(1)), match.group(2).upper()
    if narrow:
        return "B8A" if number == 8 else None
    return f"B{number:02d}"


def find_band_set(band_names: tuple[str, ...]) -> BandSet:
    """The band set whose bands are exactly ``band_names`` (in any order), else the first (in table
    order) that holds them all: a subset of a sensor's bands fills its slots and the rest of the
    canvas stays empty, which the model is trained for (:func:`band_subset` takes it). The sets that
    hold the same named bands map them alike, except Sentinel-2 L2A's processing-baseline offset,
    which the product name decides (``eov_edge.core.raster``). Else a clear error."""
    wanted = set(band_names)
    for bs in BAND_SETS.values():
        if set(bs.band_names) == wanted:
            return bs
    for bs in BAND_SETS.values():
        if wanted < set(bs.band_names):
            return bs
    raise BandMismatchError(
        f"bands {sorted(wanted)} match no known band set, nor a part of one; known: {', '.join(sorted(BAND_SETS))}"
    )


def band_subset(bs: BandSet, band_names: tuple[str, ...]) -> BandSet:
    """``bs`` reduced to ``band_names`` (kept in ``bs``'s order); the other bands' slots stay empty
    on the canvas (``View.present`` says which are filled)."""
    unknown = sorted(set(band_names) - set(bs.band_names))
    if unknown:
        raise BandMismatchError(f"band set {bs.name!r} has no band {unknown}; its bands are {list(bs.band_names)}")
    if set(band_names) == set(bs.band_names):
        return bs
    kept = tuple(b for b in bs.bands if b.name in set(band_names))
    names = ",".join(b.name for b in kept)
    return BandSet(f"{bs.name}[{names}]", bs.modality, kept, f"{bs.description}; bands {names} only",
                   stored_dtype=bs.stored_dtype, physical_unit=bs.physical_unit)


def band_sets_with_count(count: int) -> list[BandSet]:
    """Band sets a multi-band file with ``count`` bands may be guessed to hold (calibrated products
    are named, never guessed); a 3-band file only counts as a greyscale frame stored as RGB when no
    3-band set fits (the caller filters by dtype)."""
    return [bs for bs in BAND_SETS.values() if len(bs.bands) == count and bs.physical_unit is None]


def greyscale_band_sets() -> list[BandSet]:
    """Single-band sets whose products are often stored as 3 identical channels."""
    return [bs for bs in BAND_SETS.values() if bs.greyscale_as_rgb]


def to_canvas(
    values: np.ndarray, valid: np.ndarray, band_set: BandSet
) -> tuple[np.ndarray, np.ndarray]:
    """Place stored band values on the standardized canvas.

    values: (C, H, W) numbers as stored, C == len(band_set.bands), in band-set order.
    valid:  (H, W) bool, False where any band is nodata or not finite.
    Returns canvas (16, H, W) float32 with invalid pixels at 0 (the slot mean), and
    present (16,) bool telling which slots this band set fills.
    """
    if values.ndim != 3 or values.shape[0] != len(band_set.bands):
        raise BandMismatchError(
            f"band set {band_set.name!r} has {len(band_set.bands)} bands, got an array of shape "
            f"{tuple(values.shape)}"
        )
    _, height, width = values.shape
    canvas = np.zeros((NUM_CANVAS_SLOTS, height, width), dtype=np.float32)
    present = np.zeros(NUM_CANVAS_SLOTS, dtype=bool)
    for band, plane in zip(band_set.bands, values):
        slot_index = SLOT_INDEX[band.slot]
        slot = CANVAS_SLOTS[slot_index]
        physical = plane.astype(np.float32) * np.float32(band.scale) + np.float32(band.offset)
        if band.transform == "amplitude_db":
            physical = 20.0 * np.log10(np.maximum(physical, 1e-6))
        standardized = (physical - np.float32(slot.mean)) / np.float32(slot.std)
        canvas[slot_index] = np.where(valid, standardized, 0.0)
        present[slot_index] = True
    return canvas, present


def band_table() -> dict:
    """Everything the device needs to reproduce :func:`to_canvas`; stored in export manifests."""
    return {
        "canvas_version": CANVAS_VERSION,
        "slots": [asdict(slot) for slot in CANVAS_SLOTS],
        "modalities": list(MODALITIES),
        "band_sets": {
            name: {
                "modality": bs.modality,
                "description": bs.description,
                "greyscale_as_rgb": bs.greyscale_as_rgb,
                "stored_dtype": bs.stored_dtype,
                "physical_unit": bs.physical_unit,
                "bands": [asdict(band) for band in bs.bands],
            }
            for name, bs in BAND_SETS.items()
        },
    }
