"""eov_edge.quantize: INT8/FP8 QDQ calibration and weight-only INT8/INT4 recipes
(see ../shared/docs/DESIGN.md section 6). Not built yet."""
