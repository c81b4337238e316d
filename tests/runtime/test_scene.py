"""Tiled scene runs: tile plans, real georeferenced rasters to GeoJSON, bad tiles, interruption,
memory that does not grow with the scene."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eov_edge.core.raster import raster_grid
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.scene import plan_tiles, run_scene


@given(height=st.integers(1, 3000), width=st.integers(1, 3000), tile=st.integers(16, 700), data=st.data())
def test_tiles_cover_the_scene_inside_its_bounds(height, width, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    tiles = plan_tiles(height, width, tile, overlap)
    covered_x, covered_y = np.zeros(width, bool), np.zeros(height, bool)
    for t in tiles:
        w = t.window
        assert 0 <= w.col and w.col + w.width <= width and 0 <= w.row and w.row + w.height <= height
        assert w.width == min(tile, width) and w.height == min(tile, height)  # no stretched edge tiles
        covered_x[int(w.col):int(w.col + w.width)] = True
        covered_y[int(w.row):int(w.row + w.height)] = True
    assert covered_x.all() and covered_y.all()
    assert [t.index for t in tiles] == list(range(len(tiles)))


def test_bad_tile_arguments():
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, 64, 64)
    with pytest.raises(ValueError, match="tile"):
        plan_tiles(100, 100, 0, 0)


def _inside(collection, bounds):
    left, bottom, right, top = bounds
    points = []
    for feature in collection["features"]:
        geometry = feature["geometry"]
        rings = [geometry["coordinates"]] if geometry["type"] == "Point" else geometry["coordinates"][0]
        points += rings
    assert points, "no features"
    return all(left - 1e-6 <= x <= right + 1e-6 and bottom - 1e-6 <= y <= top + 1e-6 for x, y in points)


@pytest.mark.slow
def test_real_landsat_scene_gives_geojson_inside_the_raster(pipeline, shared_data):
    import rasterio
    from rasterio.warp import transform_bounds

    path = shared_data / "geotiff_samples" / "RGB.byte.tif"  # Landsat-7, EPSG:32618, nodata borders
    result = run_scene(pipeline, str(path), "detection", tile=256, overlap=32, batch_size=4)
    collection = json.loads(json.dumps(result.geojson("native")))  # serializable as it is
    with rasterio.open(path) as ds:
        bounds, epsg = ds.bounds, ds.crs.to_epsg()
        wgs84_bounds = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    assert result.tiles_done == result.tiles == len(plan_tiles(718, 791, 256, 32))
    assert collection["type"] == "FeatureCollection"
    assert collection["crs"]["properties"]["name"] == f"urn:ogc:def:crs:EPSG::{epsg}"
    assert _inside(collection, bounds)
    rfc7946 = result.geojson()  # the default: WGS 84, counterclockwise rings, no crs member
    assert "crs" not in rfc7946 and _inside(rfc7946, (wgs84_bounds[0], wgs84_bounds[1], wgs84_bounds[2],
                                                      wgs84_bounds[3]))
    assert all(0 < f["properties"]["score"] <= 1 for f in collection["features"])
    assert result.raw_detections >= len(result.detections)


@pytest.mark.slow
def test_major_tom_band_files_per_tile_answers(pipeline, shared_data):
    from eov_edge.core.raster import band_files_in

    cell = next((shared_data / "rico_hdl" / "Major-TOM-Core" / "S2L2A" / "0U").glob("*/*"))
    files = band_files_in(cell)  # 12 bands at 10, 20 and 60 m
    result = run_scene(pipeline, files, "classification", tile=512, overlap=0,
                       generation=GenerationConfig(max_new_tokens=8))
    collection = result.geojson("native")
    grid = raster_grid(files)
    a, _, c, _, e, f = grid.transform
    bounds = (c, f + e * grid.height, c + a * grid.width, f)
    assert len(collection["features"]) == result.tiles == 9
    assert _inside(collection, bounds)
    assert all(feature["properties"]["answer"] for feature in collection["features"])


def _write(path, data, nodata=None, tiled=False):
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = data.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype="uint8", nodata=nodata,
                   crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10))
    if tiled:
        profile.update(tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


@pytest.mark.slow
def test_bad_tiles_are_reported_and_the_rest_kept(pipeline, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(20, 200, (3, 600, 600), dtype=np.uint8)
    data[:, :300, :300] = 0  # the first tile is all nodata
    path = _write(tmp_path / "holes.tif", data, nodata=0)
    result = run_scene(pipeline, path, "caption", tile=300, overlap=0, generation=GenerationConfig(max_new_tokens=4))
    assert result.tiles == 4 and result.tiles_done == 4
    assert [(e.tile, e.error) for e in result.errors] == [(0, "NoValidPixelsError")]
    assert sorted(a["tile"] for a in result.tile_answers) == [1, 2, 3]

    # Corrupt compressed blocks in the lower half of a tiled GeoTIFF: those tiles fail, the upper two run.
    whole = _write(tmp_path / "whole.tif", rng.integers(20, 200, (3, 1024, 1024), dtype=np.uint8), tiled=True)
    damaged = bytearray(open(whole, "rb").read())
    size = len(damaged)
    damaged[int(size * 0.7):int(size * 0.9)] = bytes(int(size * 0.9) - int(size * 0.7))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(damaged)
    result = run_scene(pipeline, str(corrupt), "caption", tile=512, overlap=0,
                       generation=GenerationConfig(max_new_tokens=4))
    assert result.tiles_done == 4
    assert [(e.tile, e.error) for e in result.errors] == [(2, "RasterReadError"), (3, "RasterReadError")]
    assert "corrupt" in result.errors[0].message
    assert sorted(a["tile"] for a in result.tile_answers) == [0, 1]


@pytest.mark.slow
def test_interrupted_run_keeps_finished_tiles(pipeline, shared_data):
    path = str(shared_data / "geotiff_samples" / "RGB.byte.tif")
    calls = []

    def progress(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    result = run_scene(pipeline, path, "caption", tile=256, overlap=0, batch_size=2, progress=progress,
                       generation=GenerationConfig(max_new_tokens=4))
    assert result.interrupted and result.tiles_done == 4 < result.tiles
    assert len(result.tile_answers) == 4 and result.geojson()["properties"]["partial"] is True


SCENE_SCRIPT = """
import json, sys
from eov_edge.runtime.pipeline import Pipeline
from eov_edge.runtime.generation import GenerationConfig
from eov_edge.runtime.scene import run_scene
pipe = Pipeline.from_artifacts(sys.argv[1], threads=1, verify_hashes=False)
result = run_scene(pipe, sys.argv[2], "caption", tile=int(sys.argv[3]), overlap=0, batch_size=5,
                   generation=GenerationConfig(max_new_tokens=2))
print(json.dumps(result.summary()))
"""


def _synthetic_scene(path, size, block=512):
    """A size x size 3-band deflate GeoTIFF written block by block (bounded memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(1)
    pattern = rng.integers(30, 220, (3, block, block), dtype=np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000, 4000000, 10, 10), tiled=True, blockxsize=block,
                   blockysize=block, compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, block):
            for col in range(0, size, block):
                h, w = min(block, size - row), min(block, size - col)
                ds.write(pattern[:, :h, :w], window=Window(col, row, w, h))
    return str(path)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_scene_size(nano_artifacts, tmp_path):
    """25 tiles of a 2,000^2 scene vs 25 tiles of a 20,000^2 scene (1.2 GB of pixels)."""
    small = _synthetic_scene(tmp_path / "small.tif", 2000)
    large = _synthetic_scene(tmp_path / "large.tif", 20000)
    peaks = {}
    for name, path, tile in (("small", small, 400), ("large", large, 4000)):
        out = subprocess.run([sys.executable, "-c", SCENE_SCRIPT, str(nano_artifacts), path, str(tile)],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        summary = json.loads(out.stdout.strip().splitlines()[-1])
        assert summary["tiles_done"] == summary["tiles"] == 25 and summary["tiles_failed"] == 0
        peaks[name] = summary["peak_rss_mb"]
    # 100x the pixels; a whole-scene read alone would be 1,144 MiB. Allow the larger per-tile window.
    assert peaks["large"] < peaks["small"] + 200, peaks
