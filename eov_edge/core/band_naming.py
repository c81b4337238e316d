"""Which stored band is which: band descriptions, file names, ``--bands``, the product name (Sentinel-2
processing baselines), and, where nothing names them, a guess from band count and storage that is
refused when two sensors could fill the file; the units of calibrated bands. What decided each
band is recorded on the view. numpy only (the datasets are rasterio's, passed in).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np

from eov_edge.core.bands import (
    BAND_SETS,
    BandSet,
    band_name_from_filename,
    band_sets_with_count,
    get_band_set,
    greyscale_band_sets,
)
from eov_edge.core.errors import BandMismatchError

# Units a calibrated band may come in, as offsets to kelvin (the thermal set's unit).
_KELVIN_OFFSETS = {"k": 0.0, "kelvin": 0.0, "c": 273.15, "degc": 273.15, "celsius": 273.15, "°c": 273.15}

BAND_NAMES = {name.upper(): name for bs in BAND_SETS.values() for name in bs.band_names}  # upper -> as spelled


def described_bands(ds, path: str) -> tuple[str, ...] | None:
    """Band names from the file's band descriptions, when every band's is a band name of the table
    as spelled there ("B04", "B8A", "VV"; "B4" is Landsat's, not Sentinel-2's B04) and no two name
    the same band; for a one-band file without one, the band its file name names ("..._B04.tif", as
    for band files); else None."""
    names = tuple(BAND_NAMES.get(d.strip().upper()) if d else None for d in ds.descriptions)
    if ds.count == 1 and names == (None,):
        names = (band_name_from_filename(Path(path).name),)
    if not names or None in names or len(set(names)) != len(names):
        return None
    return names  # type: ignore[return-value]


def guess_band_set(ds, path: str, count: int) -> BandSet:
    # Same band count, different storage: 8-bit RGB vs 8-bit SAR/thermal vs uint16 reflectance.
    byte_data = ds.dtypes[0] == "uint8"

    def same_storage(sets: list[BandSet]) -> list[BandSet]:
        return [bs for bs in sets if (bs.stored_dtype == "uint8") == byte_data]

    candidates = same_storage(band_sets_with_count(count))
    if not candidates and count == 3:
        candidates = same_storage(greyscale_band_sets())
    if len(candidates) == 1 and count > 1 and not byte_data:
        # Undescribed calibrated products: this many bands of one sensor, or as many of another's
        # (7 uint16 bands: Landsat 8 SR, or 7 of Sentinel-2's 12). Not a guess to make silently.
        chosen = candidates[0]
        kind = np.dtype(ds.dtypes[0]).kind  # "u"/"i" integers (DN), "f" floats (physical values)

        def stored_alike(bs: BandSet) -> bool:
            return (np.dtype(bs.stored_dtype).kind == "f") == (kind == "f")

        others = sorted({bs.sensor for bs in BAND_SETS.values() if len(bs.bands) > count and stored_alike(bs)
                         and bs.sensor != chosen.sensor and bs.physical_unit is None})
        if others:
            raise BandMismatchError(
                f"{path}: {count} bands of {ds.dtypes[0]} without band descriptions could be {chosen.name} or "
                f"{count} of the bands of {', '.join(others)}; say which: --band-set {chosen.name}, or --bands "
                "with the file's band names in order (e.g. --bands B02,B03,B04,B08,...)"
            )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BandMismatchError(
            f"{path}: {count} band(s) of {ds.dtypes[0]} match no known band set; name them in file order "
            "(--bands B04,B03,B02,B08), pass the band set (--band-set) or read one file per band"
        )
    names = ", ".join(bs.name for bs in candidates)
    raise BandMismatchError(
        f"{path}: {count} band(s) of {ds.dtypes[0]} could be any of: {names}; pass band_set=... "
        "(--band-set) to say which sensor this is"
    )


def named_bands(band_names: Sequence[str] | str, count: int, path: str) -> tuple[str, ...]:
    """``--bands B04,B03,B02``: the file's bands in order, as the band table spells them."""
    if isinstance(band_names, str):
        band_names = [n for n in band_names.split(",") if n.strip()]
    names = tuple(BAND_NAMES.get(n.strip().upper()) for n in band_names)
    unknown = [n for n, name in zip(band_names, names) if name is None]
    if unknown:
        raise BandMismatchError(f"--bands {','.join(band_names)}: {unknown} are not band names; known: "
                                f"{', '.join(sorted(set(BAND_NAMES.values())))}")
    if len(names) != count:
        raise BandMismatchError(f"{path}: --bands names {len(names)} band(s) but the file has {count}")
    if len(set(names)) != len(names):
        raise BandMismatchError(f"--bands {','.join(band_names)}: a band is named twice")
    return names  # type: ignore[return-value]


def physical_values(ds, path: str, bands: list[int], values: np.ndarray, bs: BandSet) -> np.ndarray:
    """Stored values to the band set's physical unit: the file's own scale and offset tags (a uint16
    brightness temperature stored as K*100 says scale 0.01), then its unit (Celsius to kelvin)."""
    out = np.empty_like(values)
    for i, band in enumerate(bands):
        scale, offset = ds.scales[band - 1], ds.offsets[band - 1]
        unit = (ds.units[band - 1] or bs.physical_unit).strip().lower()
        if bs.physical_unit == "K" and unit not in _KELVIN_OFFSETS:
            raise BandMismatchError(f"{path}: band {band} is in {ds.units[band - 1]!r}; {bs.name} reads kelvin "
                                    "(or Celsius): convert it, or set its unit tag")
        out[i] = values[i] * np.float32(scale) + np.float32(offset + _KELVIN_OFFSETS.get(unit, 0.0))
    return out


def provenance(bs: BandSet, decided_by: str) -> list[dict]:
    """Which band filled which canvas slot, and what decided it (the answer reports it)."""
    return [{"band": band.name, "slot": band.slot, "decided_by": decided_by} for band in bs.bands]


_BASELINE = re.compile(r"_N(\d{4})_")


def with_processing_baseline(bs: BandSet, paths: list[str]) -> BandSet:
    """Sentinel-2 L2A from processing baseline 04.00 on (products named ``..._N0400_...`` and later)
    stores reflectance with a -1000 DN offset; the band names alone cannot tell, the product name
    can. N9999 (reprocessed archives such as BigEarthNet's) and older baselines carry no offset."""
    if bs.name != "sentinel2_l2a":
        return bs
    baselines = {int(m.group(1)) for p in paths if (m := _BASELINE.search(p))}
    if any(400 <= b < 9999 for b in baselines):
        return get_band_set("sentinel2_l2a_n0400")
    return bs
