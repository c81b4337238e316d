"""Model answers to places: SLIS shapes -> source pixels -> map coordinates -> GeoJSON; NMS.

A shape's location bins are relative to the canvas the model saw; :meth:`View.canvas_to_source`
takes them to pixels of the whole source raster (tiles included) and :meth:`View.pixel_to_map` to
the raster's CRS. GeoJSON follows RFC 7946 by default: WGS 84 longitude/latitude (every vertex
reprojected through the raster's full geotransform and CRS, so a box becomes the quadrilateral it
covers on the ground), exterior rings counterclockwise, 7 decimals (~1 cm), no ``crs`` member: what
web maps and most tools assume. ``output_crs="native"`` keeps the raster's CRS, named in the
(2008-style) ``crs`` member that QGIS and GDAL read, for GIS work on the pixel grid.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from eov_edge.core import slis
from eov_edge.core.metrics import iou
from eov_edge.core.paths import write_json_atomic  # noqa: F401  (re-exported for the runtime CLI)
from eov_edge.core.raster import View


@dataclass
class Detection:
    """One shape the model emitted, in source pixels and (for georeferenced views) map units."""

    kind: str  # box | quad | poly | pt
    label: str | None
    score: float  # geometric mean probability of the shape's tokens
    pixel_points: list[tuple[float, float]]  # (x, y) in source-raster pixels
    map_points: list[tuple[float, float]] | None = None  # (x, y) in the raster's CRS
    view: int = 0  # which view of the sample (multi-view answers carry view tags)
    source: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pixel_box(self) -> tuple[float, float, float, float]:
        xs, ys = zip(*self.pixel_points)
        return min(xs), min(ys), max(xs), max(ys)

    def to_dict(self) -> dict:
        return asdict(self)


def shape_scores(token_ids: Sequence[int], probs: Sequence[float], tokenizer) -> list[tuple[tuple[int, ...], float]]:
    """(location bins, score) for each opening..closing shape span in the generated tokens, in order.

    The score is the geometric mean of the probabilities of the span's tokens (tag and locations):
    one low-confidence coordinate lowers it, as it should for a detection score.
    """
    spans = []
    opening = {tokenizer.token_to_id(f"<{k}>") for k in slis.SHAPE_KINDS}
    closing = {tokenizer.token_to_id(f"</{k}>") for k in slis.SHAPE_KINDS}
    loc0 = tokenizer.token_to_id(slis.LOC_TOKENS[0])
    start = None
    for i, token in enumerate(token_ids):
        if token in opening:
            start = i
        elif token in closing and start is not None:
            span = list(range(start, i + 1))
            bins = tuple(int(token_ids[j]) - loc0 for j in span if 0 <= int(token_ids[j]) - loc0 < slis.NUM_LOC_BINS)
            logp = float(np.mean(np.log(np.maximum(np.asarray([probs[j] for j in span], np.float64), 1e-12))))
            spans.append((bins, float(np.exp(logp))))
            start = None
    return spans


def detections_from_answer(parsed: slis.ParseResult, token_ids: Sequence[int], probs: Sequence[float],
                           views: Sequence[View], tokenizer) -> list[Detection]:
    """Each parsed shape placed on its view (the view tag, else the first view)."""
    scores = shape_scores(token_ids, probs, tokenizer)
    used = [False] * len(scores)
    out = []
    for obj in parsed.objects:
        score = 0.0
        for k, (bins, s) in enumerate(scores):  # the first unused span with these bins
            if not used[k] and bins == obj.bins:
                used[k], score = True, s
                break
        view_index = obj.view if obj.view is not None and obj.view < len(views) else 0
        view = views[view_index]
        height, width = view.size
        canvas_points = obj.points(width, height)
        pixel_points = [view.canvas_to_source(x, y) for x, y in canvas_points]
        map_points = [view.pixel_to_map(x, y) for x, y in canvas_points] if view.transform is not None else None
        out.append(Detection(obj.kind, obj.label, score, pixel_points, map_points, view_index, view.sources[0]))
    return out


def non_max_suppression(detections: Sequence[Detection], iou_threshold: float = 0.5) -> list[Detection]:
    """Greedy NMS per label on source-pixel boxes: keeps the highest-scoring of overlapping
    detections (the same object seen by two overlapping tiles)."""
    kept: list[Detection] = []
    for det in sorted(detections, key=lambda d: -d.score):
        if all(k.label != det.label or iou(k.pixel_box, det.pixel_box) <= iou_threshold for k in kept):
            kept.append(det)
    return kept


def shape_geometry(kind: str, points: list[tuple[float, float]]) -> dict:
    """GeoJSON geometry of a SLIS shape kind: a Point for ``pt``, else a closed Polygon."""
    coords = [[float(x), float(y)] for x, y in points]
    if kind == "pt":
        return {"type": "Point", "coordinates": coords[0]}
    if kind == "box":
        (x1, y1), (x2, y2) = coords
        ring = [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]
    else:
        ring = coords
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def crs_member(wkt: str | None) -> dict | None:
    """The GeoJSON ``crs`` member naming ``wkt`` (an EPSG URN when it has a code, else the WKT)."""
    if wkt is None:
        return None
    from rasterio.crs import CRS

    epsg = CRS.from_wkt(wkt).to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else wkt
    return {"type": "name", "properties": {"name": name}}


OUTPUT_CRS = ("wgs84", "native")
OFF_THE_EARTH = ("a vertex lies outside the raster CRS's domain (space beyond the Earth's disk?): no longitude/"
                 "latitude; pixel_box has its pixels, --geojson-crs native its map coordinates")
WGS84_DECIMALS = 7


def _counterclockwise(ring: list[list[float]]) -> list[list[float]]:
    """RFC 7946's right-hand rule for an exterior ring (closed): counterclockwise, by its signed area."""
    area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in zip(ring, ring[1:]))
    return ring if area >= 0 else ring[::-1]


def to_wgs84(geometries: Sequence[dict], crs_wkt: str) -> list[dict | None]:
    """Point and Polygon geometries from ``crs_wkt`` to WGS 84 longitude/latitude (RFC 7946), every
    vertex of every geometry through one transform call. A geometry with a vertex the CRS cannot
    place on the Earth (space beyond the disk of a geostationary image) becomes None."""
    from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not export their base
    from rasterio.crs import CRS
    from rasterio.errors import RasterioError
    from rasterio.warp import transform

    failures = (CPLE_BaseError, RasterioError, ValueError)

    source, wgs84 = CRS.from_wkt(crs_wkt), CRS.from_epsg(4326)
    rings = [[g["coordinates"]] if g["type"] == "Point" else g["coordinates"][0] for g in geometries]

    def move(ring_list: list) -> list[list[list[float]]]:
        xs = [x for ring in ring_list for x, _ in ring]
        ys = [y for ring in ring_list for _, y in ring]
        lons, lats = transform(source, wgs84, xs, ys) if xs else ([], [])
        if not all(math.isfinite(v) for v in (*lons, *lats)):
            raise ValueError("a vertex outside the CRS's domain")
        moved = iter([round(lon, WGS84_DECIMALS), round(lat, WGS84_DECIMALS)] for lon, lat in zip(lons, lats))
        return [[next(moved) for _ in ring] for ring in ring_list]

    try:
        placed: list = move(rings)
    except failures:  # some vertex off the Earth: place each geometry on its own
        placed = []
        for ring in rings:
            try:
                placed += move([ring])
            except failures:
                placed.append(None)
    return [None if points is None else
            {"type": "Point", "coordinates": points[0]} if geometry["type"] == "Point" else
            {"type": "Polygon", "coordinates": [_counterclockwise(points)]}
            for geometry, points in zip(geometries, placed)]


def feature_collection(detections: Sequence[Detection], crs_wkt: str | None, properties: dict | None = None,
                       extra_features: Sequence[dict] = (), output_crs: str = "wgs84") -> dict:
    """A FeatureCollection of georeferenced detections in WGS 84 (RFC 7946; ``output_crs="native"``:
    the raster's CRS with a ``crs`` member), or in source pixels where the input has no CRS (then
    ``properties.coordinates`` says "pixel" and y grows downwards). ``extra_features`` are in the
    raster's CRS (or pixels) and move with the detections."""
    if output_crs not in OUTPUT_CRS:
        raise ValueError(f"output_crs must be one of {OUTPUT_CRS}, not {output_crs!r}")
    georeferenced = crs_wkt is not None and all(d.map_points is not None for d in detections)
    features = []
    for d in detections:
        points = d.map_points if georeferenced else d.pixel_points
        features.append({
            "type": "Feature",
            "geometry": shape_geometry(d.kind, points),
            "properties": {"class": d.label, "score": round(d.score, 6), "shape": d.kind, "view": d.view,
                           "source": d.source, "pixel_box": [round(v, 2) for v in d.pixel_box], **d.extra},
        })
    features += list(extra_features)
    if georeferenced and output_crs == "wgs84":
        moved = to_wgs84([f["geometry"] for f in features], crs_wkt)
        features = [{**f, "geometry": g} if g is not None else  # RFC 7946 allows a null geometry
                    {**f, "geometry": None, "properties": {**f["properties"], "geometry_error": OFF_THE_EARTH}}
                    for f, g in zip(features, moved)]
        coordinates = "wgs84"
    else:
        coordinates = "map" if georeferenced else "pixel"
    collection = {"type": "FeatureCollection", "features": features,
                  "properties": {"coordinates": coordinates, **(properties or {})}}
    if georeferenced and output_crs == "native":
        collection["crs"] = crs_member(crs_wkt)
    return collection


def shared_crs(views) -> str | None:
    """The CRS every one of ``views`` is in; None where one has none or they differ."""
    return views[0].crs if views and all(v.crs == views[0].crs for v in views) else None


def answers_geojson(answers, views, properties: dict | None = None, output_crs: str = "wgs84") -> dict:
    """One FeatureCollection of the detections of ``answers`` about ``views`` (eov-run's --geojson and
    eov-serve's answers alike): on the map where the views share a CRS, else in pixels."""
    return feature_collection([d for a in answers for d in a.detections], shared_crs(views), properties,
                              output_crs=output_crs)

