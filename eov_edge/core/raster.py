"""Read remote-sensing views (GeoTIFF, JPEG, PNG) onto the spectral canvas with rasterio.

A *view* is one image of one sensor at one time: a multi-band file (EuroSAT MS, Landsat, a photo)
or a set of single-band files (BigEarthNet, SSL4EO, Major-TOM store one file per band). Reading
resamples on read to the requested size (GDAL does it, so memory follows the output size, not the
file size), maps the bands to the 16 canvas slots (:mod:`eov_edge.core.bands`), and replaces nodata and
non-finite pixels with the slot mean while reporting them in ``valid``.

numpy and rasterio only: the runtime on the device uses this module as it is.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from eov_edge.core.bands import (
    BAND_SETS,
    BandSet,
    band_name_from_filename,
    band_sets_with_count,
    band_subset,
    find_band_set,
    get_band_set,
    greyscale_band_sets,
    to_canvas,
)
from eov_edge.core.errors import (
    BandMismatchError,
    ImageTooLargeError,
    NoValidPixelsError,
    RasterReadError,
)

# A view is one model input; bigger scenes must go through tiling, not one giant read.
MAX_VIEW_PIXELS = 4096 * 4096
# Channels of a "greyscale" JPEG may differ by JPEG chroma noise, not by content.
GREYSCALE_TOLERANCE_DN = 8.0
# Source pixels (per band) one decimated read may reduce, after the best overview: GDAL's averaging
# reads them all (a 100,000^2 raster without overviews took 21 s and 1.3 GB to reduce to one view).
MAX_SOURCE_PIXELS = 16384 * 16384
# Units a calibrated band may come in, as offsets to kelvin (the thermal set's unit).
_KELVIN_OFFSETS = {"k": 0.0, "kelvin": 0.0, "c": 273.15, "degc": 273.15, "celsius": 273.15, "°c": 273.15}

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Window:
    """A pixel rectangle of a raster: column and row offset, width and height (finest band's grid)."""

    col: float
    row: float
    width: float
    height: float

    def scaled(self, factor_x: float, factor_y: float) -> "Window":
        """The same area on a band grid ``factor`` times as fine (0.5: half as many pixels)."""
        return Window(self.col * factor_x, self.row * factor_y, self.width * factor_x, self.height * factor_y)


@dataclass(frozen=True)
class RasterGrid:
    """Size and georeference of a raster (or of the finest band of a one-file-per-band view)."""

    height: int
    width: int
    crs: str | None
    transform: tuple[float, ...] | None

    def pixel_to_map(self, x: float, y: float) -> tuple[float, float]:
        """Pixel coordinates of the raster to map coordinates in ``crs``."""
        return apply_affine(self.transform, x, y)


def apply_affine(transform: tuple[float, ...] | None, x: float, y: float) -> tuple[float, float]:
    """Affine (a, b, c, d, e, f), as rasterio orders it, applied to pixel (x, y)."""
    if transform is None:
        raise ValueError("not georeferenced: no map coordinates")
    a, b, c, d, e, f = transform
    return a * x + b * y + c, d * x + e * y + f


@dataclass
class View:
    """One image on the canvas, with what is needed to map model coordinates back to the map."""

    canvas: np.ndarray  # (16, H, W) float32, standardized
    valid: np.ndarray  # (H, W) bool
    present: np.ndarray  # (16,) bool: slots this sensor fills
    band_set: str
    modality: str
    sources: tuple[str, ...]
    source_size: tuple[int, int]  # (height, width) of the finest source band
    crs: str | None = None  # WKT, None when the file is not georeferenced
    transform: tuple[float, ...] | None = None  # affine (a, b, c, d, e, f) for *canvas* pixels
    extra: dict = field(default_factory=dict)
    window: "Window | None" = None  # the source pixels the canvas covers (finest band's grid)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.canvas.shape[1]), int(self.canvas.shape[2])

    def canvas_to_source(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixel coordinates to pixel coordinates of the source raster (the whole file)."""
        window = self.window or Window(0, 0, self.source_size[1], self.source_size[0])
        height, width = self.size
        return window.col + x * window.width / width, window.row + y * window.height / height

    def pixel_to_map(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixel coordinates (x right, y down) to map coordinates in ``crs``."""
        if self.transform is None:
            raise ValueError(f"{self.sources[0]} is not georeferenced: it has no map coordinates")
        return apply_affine(self.transform, x, y)


def _rasterio():
    import rasterio  # lazy: keeps `import eov_edge` cheap
    from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning

    # Not the user's concern: a missing georeference is reported on the View (crs None), and a
    # nodata value taking precedence over an alpha band is what the reader wants (nodata -> mask).
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    warnings.filterwarnings("ignore", category=NodataShadowWarning)
    return rasterio


def _open(path: str):
    rasterio = _rasterio()
    if not os.path.exists(path):
        raise RasterReadError(f"{path}: no such file; check the path")
    try:
        ds = rasterio.open(path)
    except rasterio.errors.RasterioError as err:
        raise RasterReadError(
            f"{path}: not a raster GDAL can read, or the file is truncated ({err}); "
            "re-download or re-export it as GeoTIFF, JPEG or PNG"
        ) from None
    try:
        _check_kind(ds, path)
    except BandMismatchError:
        ds.close()
        raise
    return ds


def _check_kind(ds, path: str) -> None:
    """Refuse what no band set can mean, with what to do: complex values (SAR SLC) and paletted
    class maps, whose numbers are indices into a colour table, not measurements."""
    from rasterio.enums import ColorInterp

    if any(dtype.startswith("complex") for dtype in ds.dtypes):
        raise BandMismatchError(
            f"{path}: complex values ({ds.dtypes[0]}, e.g. SAR single-look complex); the model reads "
            "backscatter in dB: convert to intensity first (10*log10(|z|^2), e.g. with SNAP or "
            "gdal_calc.py) and calibrate to sigma0 for Sentinel-1"
        )
    if ds.colorinterp and ds.colorinterp[0] == ColorInterp.palette:
        raise BandMismatchError(
            f"{path}: a paletted raster (its values index a colour table: a class map or a rendered "
            "quicklook, not measurements); expand it to RGB first (gdal_translate -expand rgb) if it "
            "is an image, or leave it out if it is a label map"
        )


def _normalize_size(size: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        height, width = default
    elif isinstance(size, int):
        height, width = size, size
    else:
        height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {height}x{width}")
    if height * width > MAX_VIEW_PIXELS:
        raise ImageTooLargeError(
            f"a {height}x{width} view exceeds {MAX_VIEW_PIXELS} pixels; read it at a smaller size "
            "or tile the scene (eov-run --tile)"
        )
    return height, width


def _read_planes(ds, indexes: list[int], out_shape: tuple[int, int], path: str,
                 window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read bands (of ``window`` in ``ds`` pixels, or all) resampled to ``out_shape``; returns values
    (C, H, W) and valid (H, W)."""
    rasterio = _rasterio()
    from rasterio.enums import Resampling

    source_h, source_w = (window.height, window.width) if window is not None else (ds.height, ds.width)
    downsampling = out_shape[0] < source_h or out_shape[1] < source_w
    resampling = Resampling.average if downsampling else Resampling.bilinear
    if downsampling:
        _check_decimated_read(ds, path, source_h, source_w, out_shape, indexes, window)
    elif window is not None:
        _check_blocks_in_file(ds, path, window, indexes)
    rio_window = None
    if window is not None:
        from rasterio.windows import Window as RioWindow

        rio_window = RioWindow(window.col, window.row, window.width, window.height)
    try:
        data = ds.read(indexes, out_shape=(len(indexes), *out_shape), resampling=resampling, masked=True,
                       window=rio_window)
    except rasterio.errors.RasterioError as err:
        raise RasterReadError(
            f"{path}: reading the pixels failed, the file is probably truncated or corrupt ({err})"
        ) from None
    values = np.ma.getdata(data).astype(np.float32, copy=False)
    mask = np.ma.getmaskarray(data)  # True where nodata
    valid = ~mask.any(axis=0) & np.isfinite(values).all(axis=0)
    return values, valid


def _check_decimated_read(ds, path: str, source_h: float, source_w: float, out_shape: tuple[int, int],
                          indexes: list[int], window: Window | None) -> None:
    """Refuse a reduction GDAL would do from more than MAX_SOURCE_PIXELS (after the coarsest overview
    still finer than the output, which GDAL reads instead of the full resolution); and, where it
    would read an overview, make sure the full-resolution data exists: a truncated cloud-optimized
    GeoTIFF keeps its overviews (stored first) and would answer from them as if whole."""
    factors = [f for f in (ds.overviews(indexes[0]) or []) if f <= min(source_h / out_shape[0], source_w / out_shape[1])]
    best = max(factors, default=1)
    pixels = source_h * source_w / (best * best)
    if pixels > MAX_SOURCE_PIXELS:
        raise ImageTooLargeError(
            f"{path}: reducing {source_w:.0f}x{source_h:.0f} pixels to one {out_shape[1]}x{out_shape[0]} view reads "
            f"{pixels / 1e6:.0f} million pixels per band (limit {MAX_SOURCE_PIXELS / 1e6:.0f} million); tile the scene "
            "(eov-run --tile 1024) or give the file overviews (gdaladdo -r average FILE)"
        )
    if best > 1 or window is not None:
        _check_blocks_in_file(ds, path, window, indexes)


def _check_blocks_in_file(ds, path: str, window: Window | None, indexes: list[int]) -> None:
    """Every full-resolution TIFF block under ``window`` (all: None) lies inside the file. GDAL
    fills a block it cannot read with zeros or reads an overview instead, so a cut file is caught
    here, from the block offsets, before any pixel is read."""
    if ds.driver not in ("GTiff", "COG") or ds.name.startswith("/vsi"):
        return
    try:
        file_size = os.path.getsize(path)
    except OSError:
        return
    block_h, block_w = ds.block_shapes[0]
    if window is None:
        window = Window(0, 0, ds.width, ds.height)
    cols = range(int(window.col // block_w), int(-(-(window.col + window.width) // block_w)))
    rows = range(int(window.row // block_h), int(-(-(window.row + window.height) // block_h)))
    band_interleaved = ds.interleaving is not None and ds.interleaving.name == "BAND"
    for band in (indexes if band_interleaved else indexes[:1]):
        for row in rows:
            for col in cols:
                offset = ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band)
                size = ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band)
                if offset and size and int(offset) + int(size) > file_size:
                    raise RasterReadError(
                        f"{path}: the file is truncated ({file_size} bytes; block {col},{row} of band {band} "
                        f"ends at byte {int(offset) + int(size)}); re-download it"
                    )


def _georef(ds, out_shape: tuple[int, int], window: Window | None = None
            ) -> tuple[str | None, tuple[float, ...] | None]:
    if ds.crs is None:
        return None, None
    from affine import Affine

    if window is None:
        window = Window(0, 0, ds.width, ds.height)
    origin = ds.transform @ Affine.translation(window.col, window.row)
    scaled = origin @ Affine.scale(window.width / out_shape[1], window.height / out_shape[0])
    return ds.crs.to_wkt(), tuple(scaled)[:6]


_BAND_NAMES = {name.upper(): name for bs in BAND_SETS.values() for name in bs.band_names}  # upper -> as spelled


def _described_bands(ds, path: str) -> tuple[str, ...] | None:
    """Band names from the file's band descriptions, when every band's is a band name of the table
    as spelled there ("B04", "B8A", "VV"; "B4" is Landsat's, not Sentinel-2's B04) and no two name
    the same band; for a one-band file without one, the band its file name names ("..._B04.tif", as
    for band files); else None."""
    names = tuple(_BAND_NAMES.get(d.strip().upper()) if d else None for d in ds.descriptions)
    if ds.count == 1 and names == (None,):
        names = (band_name_from_filename(Path(path).name),)
    if not names or None in names or len(set(names)) != len(names):
        return None
    return names  # type: ignore[return-value]


def _guess_band_set(ds, path: str, count: int) -> BandSet:
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


def read_view(
    paths: PathLike | Sequence[PathLike],
    band_set: str | None = None,
    size: int | tuple[int, int] | None = None,
    nodata: float | None = None,
    window: Window | None = None,
    bands: Sequence[str] | str | None = None,
) -> View:
    """Read one view onto the canvas.

    paths: one multi-band file, or one file per band (band names taken from the file names,
        e.g. ``..._B8A.tif``, ``VV.tif``).
    band_set: name in :data:`eov_edge.core.bands.BAND_SETS`; guessed from band count, dtype and file
        names when None, with an error when ambiguous (1-band 8-bit: thermal or SAR?).
    size: output (height, width) or an int for a square; the finest source resolution when None.
    nodata: value to treat as missing in addition to the files' own nodata.
    window: read only this rectangle (pixels of the finest band), as a tile of a large scene; GDAL
        reads just the blocks under it, so memory follows the window and ``size``, not the scene.
    bands: the band names of a multi-band file in file order ("B04,B03,B02,B08"), for files without
        band descriptions; any subset of one sensor's bands.

    ``View.extra["bands"]`` says which band filled which slot and what decided it.
    """
    path_list = _path_list(paths)
    if len(path_list) == 1:
        return _read_multiband(path_list[0], band_set, size, nodata, window, bands)
    if bands is not None:
        raise BandMismatchError("--bands names the bands of one multi-band file; band files are named by their "
                                "file names (..._B04.tif)")
    return _read_band_files(path_list, band_set, size, nodata, window)


def _path_list(paths: PathLike | Sequence[PathLike]) -> list[str]:
    path_list = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not path_list:
        raise RasterReadError("no files given for the view")
    return path_list


def raster_grid(paths: PathLike | Sequence[PathLike]) -> RasterGrid:
    """Size and georeference of a view's finest band, without reading pixels (plans scene tiles)."""
    datasets = [_open(p) for p in _path_list(paths)]
    try:
        finest = max(datasets, key=lambda ds: ds.width * ds.height)
        crs = finest.crs.to_wkt() if finest.crs is not None else None
        transform = tuple(finest.transform)[:6] if finest.crs is not None else None
        return RasterGrid(finest.height, finest.width, crs, transform)
    finally:
        for ds in datasets:
            ds.close()


def _check_window(window: Window | None, ds, path: str) -> None:
    if window is None:
        return
    if window.width <= 0 or window.height <= 0:
        raise ValueError(f"window {window} is empty")
    inside = (window.col >= 0 and window.row >= 0 and window.col + window.width <= ds.width + 1e-6
              and window.row + window.height <= ds.height + 1e-6)
    if not inside:
        raise ValueError(f"{path}: window {window} reaches outside the {ds.width}x{ds.height} raster")


def _default_shape(ds, window: Window | None) -> tuple[int, int]:
    if window is None:
        return ds.height, ds.width
    return max(1, round(window.height)), max(1, round(window.width))


def _finish(values, valid, bs: BandSet, nodata, sources, source_size, crs, transform,
            window: Window | None = None) -> View:
    if nodata is not None:
        valid &= ~(values == np.float32(nodata)).any(axis=0)
    if not valid.any():
        raise NoValidPixelsError(
            f"{sources[0]}: every pixel is nodata or NaN; nothing to infer on (pick another scene or "
            "tile, or check the nodata value)"
        )
    canvas, present = to_canvas(values, valid, bs)
    return View(canvas, valid, present, bs.name, bs.modality, tuple(sources), source_size, crs, transform,
                window=window)


def _read_multiband(path: str, band_set: str | None, size, nodata, window: Window | None = None,
                    band_names: Sequence[str] | str | None = None) -> View:
    with _open(path) as ds:
        # An alpha band (RGBA PNG) is a validity mask, not a band: GDAL's dataset mask, which the
        # masked reads below apply, already comes from it.
        from rasterio.enums import ColorInterp

        bands = [i + 1 for i, c in enumerate(ds.colorinterp) if c != ColorInterp.alpha]
        if band_names is not None:  # the caller names the file's bands, in order (--bands)
            described, decided_by = _named_bands(band_names, len(bands), path), "--bands"
        else:
            described, decided_by = (None if band_set else _described_bands(ds, path)), "band descriptions"
            if described and ds.count == 1 and not ds.descriptions[0]:
                decided_by = "file name"
        if described:  # the file names its bands: any subset of a known sensor's, read in its order
            bs = band_subset(_with_processing_baseline(find_band_set(described), [path]), described)
            bands = [bands[described.index(name)] for name in bs.band_names]
        else:
            bs = get_band_set(band_set) if band_set else _guess_band_set(ds, path, len(bands))
            decided_by = "--band-set" if band_set else "band count and data type"
        _check_window(window, ds, path)
        out_shape = _normalize_size(size, _default_shape(ds, window))
        if len(bands) == len(bs.bands):
            values, valid = _read_planes(ds, bands, out_shape, path, window)
        elif bs.greyscale_as_rgb and len(bs.bands) == 1 and len(bands) == 3:
            rgb, valid = _read_planes(ds, bands, out_shape, path, window)
            spread = float(np.abs(rgb - rgb.mean(axis=0, keepdims=True)).mean())
            if spread > GREYSCALE_TOLERANCE_DN:
                raise BandMismatchError(
                    f"{path}: band set {bs.name!r} expects a greyscale frame but the 3 channels differ "
                    f"(mean spread {spread:.1f} DN); is this a colour photo (use rgb8)?"
                )
            values = rgb.mean(axis=0, keepdims=True)
        else:
            raise BandMismatchError(
                f"{path}: has {len(bands)} band(s) but band set {bs.name!r} needs {len(bs.bands)} "
                f"({', '.join(bs.band_names)}); pick the matching band set or the right file"
            )
        if bs.physical_unit is not None:
            values = _physical_values(ds, path, bands, values, bs)
        crs, transform = _georef(ds, out_shape, window)
        view = _finish(values, valid, bs, nodata, [path], (ds.height, ds.width), crs, transform, window)
        view.extra["bands"] = _provenance(bs, decided_by)
        return view


def _named_bands(band_names: Sequence[str] | str, count: int, path: str) -> tuple[str, ...]:
    """``--bands B04,B03,B02``: the file's bands in order, as the band table spells them."""
    if isinstance(band_names, str):
        band_names = [n for n in band_names.split(",") if n.strip()]
    names = tuple(_BAND_NAMES.get(n.strip().upper()) for n in band_names)
    unknown = [n for n, name in zip(band_names, names) if name is None]
    if unknown:
        raise BandMismatchError(f"--bands {','.join(band_names)}: {unknown} are not band names; known: "
                                f"{', '.join(sorted(set(_BAND_NAMES.values())))}")
    if len(names) != count:
        raise BandMismatchError(f"{path}: --bands names {len(names)} band(s) but the file has {count}")
    if len(set(names)) != len(names):
        raise BandMismatchError(f"--bands {','.join(band_names)}: a band is named twice")
    return names  # type: ignore[return-value]


def _physical_values(ds, path: str, bands: list[int], values: np.ndarray, bs: BandSet) -> np.ndarray:
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


def _provenance(bs: BandSet, decided_by: str) -> list[dict]:
    """Which band filled which canvas slot, and what decided it (the answer reports it)."""
    return [{"band": band.name, "slot": band.slot, "decided_by": decided_by} for band in bs.bands]


_BASELINE = re.compile(r"_N(\d{4})_")


def _with_processing_baseline(bs: BandSet, paths: list[str]) -> BandSet:
    """Sentinel-2 L2A from processing baseline 04.00 on (products named ``..._N0400_...`` and later)
    stores reflectance with a -1000 DN offset; the band names alone cannot tell, the product name
    can. N9999 (reprocessed archives such as BigEarthNet's) and older baselines carry no offset."""
    if bs.name != "sentinel2_l2a":
        return bs
    baselines = {int(m.group(1)) for p in paths if (m := _BASELINE.search(p))}
    if any(400 <= b < 9999 for b in baselines):
        return get_band_set("sentinel2_l2a_n0400")
    return bs


def _read_band_files(paths: list[str], band_set: str | None, size, nodata, window: Window | None = None) -> View:
    names = []
    for path in paths:
        name = band_name_from_filename(Path(path).name)
        if name is None:
            raise BandMismatchError(
                f"{path}: cannot tell the band from the file name; name files like '..._B04.tif' or "
                "'VV.tif', or stack the bands into one multi-band file"
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise BandMismatchError(f"the same band appears twice among {names}")
    full = get_band_set(band_set) if band_set else _with_processing_baseline(find_band_set(tuple(names)), paths)
    bs = band_subset(full, tuple(names))  # a subset of the sensor's bands: the other slots stay empty
    by_name = dict(zip(names, paths))
    ordered = [by_name[n] for n in bs.band_names]

    # The finest band fixes the grid (and the georeference); coarser bands are resampled onto it.
    datasets = [_open(p) for p in ordered]
    try:
        finest = max(datasets, key=lambda ds: ds.width * ds.height)
        _check_window(window, finest, finest.name)
        out_shape = _normalize_size(size, _default_shape(finest, window))
        for ds, path in zip(datasets, ordered):
            if ds.count != 1:
                raise BandMismatchError(f"{path}: one file per band expected, found {ds.count} bands")
            if finest.crs is not None and ds.crs is not None:
                tol = max(abs(finest.transform.a), abs(ds.transform.a))
                if any(abs(x - y) > tol for x, y in zip(ds.bounds, finest.bounds)):
                    raise BandMismatchError(
                        f"{path}: covers {tuple(ds.bounds)} but {finest.name} covers "
                        f"{tuple(finest.bounds)}; all band files of a view must cover the same area"
                    )
        def band_window(ds) -> Window | None:  # the same area on a coarser band's grid
            if window is None:
                return None
            return window.scaled(ds.width / finest.width, ds.height / finest.height)

        planes, valids = zip(*(_read_planes(ds, [1], out_shape, p, band_window(ds))
                               for ds, p in zip(datasets, ordered)))
        values = np.concatenate(planes, axis=0)
        valid = np.logical_and.reduce(valids)
        crs, transform = _georef(finest, out_shape, window)
        view = _finish(values, valid, bs, nodata, ordered, (finest.height, finest.width), crs, transform, window)
        view.extra["bands"] = _provenance(bs, "--band-set and file names" if band_set else "file names")
        return view
    finally:
        for ds in datasets:
            ds.close()


def band_files_in(directory: PathLike) -> list[str]:
    """The single-band rasters of a one-file-per-band folder (BigEarthNet, SSL4EO), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RasterReadError(f"{directory}: not a directory")
    files = sorted(
        str(p) for p in directory.iterdir()
        if p.suffix.lower() in (".tif", ".tiff") and band_name_from_filename(p.name) is not None
    )
    if not files:
        raise RasterReadError(f"{directory}: no band files (e.g. B02.tif, *_VV.tif) found")
    return files
