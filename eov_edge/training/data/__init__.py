"""Training and evaluation data over the shared real-data folder (see docs/data.md)."""
