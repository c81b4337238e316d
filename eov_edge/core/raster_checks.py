"""What a raster must pass before its pixels are read: GDAL can open it, its values are measurements
(not complex, not palette indices), the window lies inside it, a reduced read stays within a bound,
and the blocks a read depends on are in the file (a cut cloud-optimized GeoTIFF still opens, and
answers reduced reads from the overviews stored first). rasterio and numpy only.

A ``window`` here is an :class:`eov_edge.core.raster.Window` (col, row, width, height in pixels) or
None for the whole raster.
"""

from __future__ import annotations

import os
import warnings

from eov_edge.core.errors import BandMismatchError, ImageTooLargeError, RasterReadError

# Source pixels (per band) one decimated read may reduce, after the best overview: GDAL's averaging
# reads them all (a 100,000^2 raster without overviews took 21 s and 1.3 GB to reduce to one view).
MAX_SOURCE_PIXELS = 16384 * 16384


def rasterio_module():
    import rasterio  # lazy: keeps `import eov_edge` cheap
    from rasterio.errors import NodataShadowWarning, NotGeoreferencedWarning

    # Not the user's concern: a missing georeference is reported on the View (crs None), and a
    # nodata value taking precedence over an alpha band is what the reader wants (nodata -> mask).
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    warnings.filterwarnings("ignore", category=NodataShadowWarning)
    return rasterio


def open_raster(path: str):
    rasterio = rasterio_module()
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
        check_kind(ds, path)
        check_complete(ds, path)
    except (BandMismatchError, RasterReadError):
        ds.close()
        raise
    return ds


# A PNG ends with its IEND chunk; a JPEG with its end-of-image marker (some writers pad after it).
PNG_END = b"IEND\xaeB`\x82"
JPEG_END = b"\xff\xd9"


def check_complete(ds, path: str) -> None:
    """Refuse a PNG or JPEG cut short: GDAL decodes what is there and fills the rest with zeros,
    without an error, so a truncated download would be answered as a dark image."""
    if ds.driver not in ("PNG", "JPEG") or not os.path.isfile(path):
        return
    with open(path, "rb") as handle:
        handle.seek(max(0, os.path.getsize(path) - 64))
        tail = handle.read()
    complete = tail.endswith(PNG_END) if ds.driver == "PNG" else JPEG_END in tail
    if not complete:
        raise RasterReadError(
            f"{path}: the {ds.driver} file is truncated (it has no end marker: {os.path.getsize(path)} bytes, "
            "cut short in a download or copy); fetch or export it again"
        )


def check_kind(ds, path: str) -> None:
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


def check_decimated_read(ds, path: str, source_h: float, source_w: float, out_shape: tuple[int, int],
                          indexes: list[int], window) -> None:
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
        check_blocks_in_file(ds, path, window, indexes)


def check_blocks_in_file(ds, path: str, window, indexes: list[int]) -> None:
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
        col, row, width, height = 0, 0, ds.width, ds.height
    else:
        col, row, width, height = window.col, window.row, window.width, window.height
    cols = range(int(col // block_w), int(-(-(col + width) // block_w)))
    rows = range(int(row // block_h), int(-(-(row + height) // block_h)))
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


def check_window(window, ds, path: str) -> None:
    if window is None:
        return
    if window.width <= 0 or window.height <= 0:
        raise ValueError(f"window {window} is empty")
    inside = (window.col >= 0 and window.row >= 0 and window.col + window.width <= ds.width + 1e-6
              and window.row + window.height <= ds.height + 1e-6)
    if not inside:
        raise ValueError(f"{path}: window {window} reaches outside the {ds.width}x{ds.height} raster")
