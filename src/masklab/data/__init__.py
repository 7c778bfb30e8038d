"""Datasets, transforms and loading; importing this package registers datasets and transforms."""

from masklab.data import datasets as _datasets  # noqa: F401  (registers datasets)
from masklab.data import preprocessor as _preprocessor  # noqa: F401  (registers DataPreprocessor)
from masklab.data import transforms as _transforms  # noqa: F401  (registers transforms)
