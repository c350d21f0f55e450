"""Datasets: the kohya folder walk, metadata tables, the kohya dataset TOML schema, images."""
