"""Torch-free pieces shared by training and the device: band table and raster reading, SLIS and its
grammar, prompt format, task kinds, tokenizer, model inputs, the artifacts manifest, errors, paths,
calibration samples, metrics and provenance. Everything else builds on these; they import nothing
from the rest of the project and nothing that needs torch or transformers."""
