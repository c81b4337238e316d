"""Property: any raster the reader is handed gives a finite canvas with a validity mask, or the
project's own error; nothing else escapes (no library traceback, no warning, no NaN on the canvas).

Generated rasters (strategies, also listed in docs/inputs.md): dtype uint8, uint16,
int16 (their whole range), float32 (up to 1e37, negatives) or complex64; 1 to 5 bands; 1 to 48 pixels a side (tiny, thin); band descriptions
absent, known band names or junk; nodata absent or 0; NaN pixels in float data; with or without a
CRS; a colour table (paletted); an alpha band.
"""

import warnings

import numpy as np
import rasterio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from eov_edge.core.errors import EOVError
from eov_edge.core.raster import read_view

DTYPES = ("uint8", "uint16", "int16", "float32", "complex64")
DESCRIPTIONS = (None, "B02", "B03", "B04", "B8A", "VV", "VH", "red", "junk")


@st.composite
def rasters(draw):
    dtype = draw(st.sampled_from(DTYPES))
    count = draw(st.integers(1, 5))
    height, width = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if dtype in ("uint8", "uint16", "int16"):
        info = np.iinfo(dtype)
        data = rng.integers(info.min, info.max, (count, height, width), endpoint=True).astype(dtype)
    else:  # the whole float32 range, negatives and zeros included
        data = (rng.standard_normal((count, height, width)) * 10.0 ** rng.integers(-3, 37)).astype(dtype)
        if dtype == "float32" and draw(st.booleans()):
            data[:, : max(1, height // 3)] = np.nan
    return {
        "dtype": dtype, "data": data,
        "descriptions": [draw(st.sampled_from(DESCRIPTIONS)) for _ in range(count)],
        "nodata": draw(st.sampled_from([None, 0])) if dtype != "complex64" else None,
        "crs": draw(st.sampled_from([None, "EPSG:32633", "EPSG:4326"])),
        "palette": dtype == "uint8" and count == 1 and draw(st.booleans()),
        "alpha": dtype == "uint8" and count == 4 and draw(st.booleans()),
    }


def _write(path, r) -> None:
    count, height, width = r["data"].shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=r["dtype"], nodata=r["nodata"])
    if r["crs"]:
        profile.update(crs=r["crs"], transform=from_origin(500000, 4000000, 10, 10))
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(r["data"])
        for index, description in enumerate(r["descriptions"], 1):
            if description:
                ds.set_band_description(index, description)
        if r["palette"]:
            ds.write_colormap(1, {0: (0, 0, 0, 255), 255: (255, 255, 255, 255)})
        if r["alpha"]:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(r=rasters())
def test_any_raster_gives_a_finite_canvas_or_our_error(tmp_path, r):
    path = tmp_path / "r.tif"
    _write(path, r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a library warning reaching the user is a failure too
        try:
            view = read_view(path)
        except EOVError:
            return
    assert np.isfinite(view.canvas).all()
    assert view.valid.dtype == bool and view.valid.shape == view.canvas.shape[1:] and view.valid.any()
    assert view.present.any() and not view.canvas[~view.present].any()
