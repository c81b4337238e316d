"""Exceptions raised for bad user input.

Each subclasses the built-in a caller would naturally catch (``ValueError`` for bad values,
``OSError`` for unreadable files) and carries a message that says what to do next. This module
imports nothing heavy: the runtime on the device raises the same types as training does.
"""

from __future__ import annotations


class EOVError(Exception):
    """Base class of every error eov-edge raises on purpose."""


class ConfigError(EOVError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class UnknownBandError(EOVError, ValueError):
    """A band name matches no slot of the spectral canvas."""


class BandMismatchError(EOVError, ValueError):
    """The number or names of bands in a raster match no known band set."""


class RasterReadError(EOVError, OSError):
    """A file is missing, truncated, or not a raster GDAL can read."""


class NoValidPixelsError(EOVError, ValueError):
    """Every pixel of a view is nodata or NaN, so there is nothing to look at."""


class ImageTooLargeError(EOVError, ValueError):
    """A raster is too large to read in one piece; it must be tiled."""


class ViewMismatchError(EOVError, ValueError):
    """The views of one sample disagree (size, count) or do not fit the model."""


class PromptError(EOVError, ValueError):
    """A prompt is malformed: wrong number of ``<image>`` tags, too long for the context, ..."""


class CheckpointError(EOVError, OSError):
    """A checkpoint directory is missing, corrupt, or of another architecture."""


class EngineError(EOVError, RuntimeError):
    """An engine cannot be planned, built or loaded for this device, precision or artifacts."""


class HeldOutError(EOVError, ValueError):
    """A held-out examples file (JSONL) is malformed: the message names the line and what is wrong."""
