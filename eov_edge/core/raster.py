"""Read remote-sensing views (GeoTIFF, JPEG, PNG) onto the spectral canvas with rasterio.

A *view* is one image of one sensor at one time: a multi-band file (EuroSAT MS, Landsat, a photo)
or a set of single-band files (BigEarthNet, SSL4EO, Major-TOM store one file per band). Reading
resamples on read to the requested size (GDAL does it, so memory follows the output size, not the
file size), maps the bands to the 16 canvas slots (:mod:`eov_edge.core.bands`), and replaces nodata and
non-finite pixels with the slot mean while reporting them in ``valid``.

Which band is which is decided in :mod:`eov_edge.core.band_naming`, what a file must pass before
its pixels are read in :mod:`eov_edge.core.raster_checks`. numpy and rasterio only: the runtime on
the device uses these modules as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from eov_edge.core.band_naming import (
    described_bands,
    guess_band_set,
    named_bands,
    physical_values,
    provenance,
    with_processing_baseline,
)
from eov_edge.core.bands import (
    CANVAS_SLOTS,
    BandSet,
    band_name_from_filename,
    band_subset,
    find_band_set,
    get_band_set,
    to_canvas,
)
from eov_edge.core.errors import BandMismatchError, ImageTooLargeError, NoValidPixelsError, RasterReadError
from eov_edge.core.raster_checks import (  # noqa: F401  (MAX_SOURCE_PIXELS: the bound, re-exported)
    MAX_SOURCE_PIXELS,
    check_blocks_in_file,
    check_decimated_read,
    check_window,
    open_raster,
    rasterio_module,
)

# A view is one model input; bigger scenes must go through tiling, not one giant read.
MAX_VIEW_PIXELS = 4096 * 4096
# Channels of a "greyscale" JPEG may differ by JPEG chroma noise, not by content.
GREYSCALE_TOLERANCE_DN = 8.0

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

    def inputs(self) -> dict:
        """What the view was read as: sources, band set, modality, the slots its bands filled (band,
        slot, what decided it) and the canvas slots left empty. Answers report it."""
        empty = [slot.name for slot, present in zip(CANVAS_SLOTS, self.present.tolist()) if not present]
        return {"sources": list(self.sources), "band_set": self.band_set, "modality": self.modality,
                "slots": self.extra.get("bands", []), "empty_slots": empty}

    def pixel_to_map(self, x: float, y: float) -> tuple[float, float]:
        """Canvas pixel coordinates (x right, y down) to map coordinates in ``crs``."""
        if self.transform is None:
            raise ValueError(f"{self.sources[0]} is not georeferenced: it has no map coordinates")
        return apply_affine(self.transform, x, y)


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
    rasterio = rasterio_module()
    from rasterio.enums import Resampling

    source_h, source_w = (window.height, window.width) if window is not None else (ds.height, ds.width)
    downsampling = out_shape[0] < source_h or out_shape[1] < source_w
    resampling = Resampling.average if downsampling else Resampling.bilinear
    if downsampling:
        check_decimated_read(ds, path, source_h, source_w, out_shape, indexes, window)
    elif window is not None:
        check_blocks_in_file(ds, path, window, indexes)
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
    datasets = [open_raster(p) for p in _path_list(paths)]
    try:
        finest = max(datasets, key=lambda ds: ds.width * ds.height)
        crs = finest.crs.to_wkt() if finest.crs is not None else None
        transform = tuple(finest.transform)[:6] if finest.crs is not None else None
        return RasterGrid(finest.height, finest.width, crs, transform)
    finally:
        for ds in datasets:
            ds.close()


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
    with open_raster(path) as ds:
        # An alpha band (RGBA PNG) is a validity mask, not a band: GDAL's dataset mask, which the
        # masked reads below apply, already comes from it.
        from rasterio.enums import ColorInterp

        bands = [i + 1 for i, c in enumerate(ds.colorinterp) if c != ColorInterp.alpha]
        if band_names is not None:  # the caller names the file's bands, in order (--bands)
            described, decided_by = named_bands(band_names, len(bands), path), "--bands"
        else:
            described, decided_by = (None if band_set else described_bands(ds, path)), "band descriptions"
            if described and ds.count == 1 and not ds.descriptions[0]:
                decided_by = "file name"
        if described:  # the file names its bands: any subset of a known sensor's, read in its order
            bs = band_subset(with_processing_baseline(find_band_set(described), [path]), described)
            bands = [bands[described.index(name)] for name in bs.band_names]
        else:
            bs = get_band_set(band_set) if band_set else guess_band_set(ds, path, len(bands))
            decided_by = "--band-set" if band_set else "band count and data type"
        check_window(window, ds, path)
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
            values = physical_values(ds, path, bands, values, bs)
        crs, transform = _georef(ds, out_shape, window)
        view = _finish(values, valid, bs, nodata, [path], (ds.height, ds.width), crs, transform, window)
        view.extra["bands"] = provenance(bs, decided_by)
        return view


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
    full = get_band_set(band_set) if band_set else with_processing_baseline(find_band_set(tuple(names)), paths)
    bs = band_subset(full, tuple(names))  # a subset of the sensor's bands: the other slots stay empty
    by_name = dict(zip(names, paths))
    ordered = [by_name[n] for n in bs.band_names]

    # The finest band fixes the grid (and the georeference); coarser bands are resampled onto it.
    datasets = [open_raster(p) for p in ordered]
    try:
        finest = max(datasets, key=lambda ds: ds.width * ds.height)
        check_window(window, finest, finest.name)
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
        view.extra["bands"] = provenance(bs, "--band-set and file names" if band_set else "file names")
        return view
    finally:
        for ds in datasets:
            ds.close()


def view_sources(image: str) -> str | list[str]:
    """What one IMAGE argument names, as :func:`read_view` takes it: a raster file, a folder of
    one-file-per-band rasters, or band files joined with commas (eov-run and eov-serve alike)."""
    if "," in image:
        return [p for p in image.split(",") if p]
    if Path(image).is_dir():
        return band_files_in(image)
    return image


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
