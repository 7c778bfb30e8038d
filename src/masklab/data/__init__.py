"""Datasets, transforms and loading; importing this package registers datasets and transforms."""

from masklab.data import datasets as _datasets  # noqa: F401  (registers datasets)
