"""Mask Auto-Labeler (MAL): box-supervised mask labeling; importing registers its model and encoders."""

from masklab.models.mal.encoders import MalTinyEncoder, MalViTEncoder
from masklab.models.mal.model import MALModel
from masklab.models.mal.preprocess import MalDataPreprocessor
from masklab.models.mal.schedule import mal_decay, mal_lr_factor, per_sample_lr

__all__ = [
    "MALModel",
    "MalDataPreprocessor",
    "MalTinyEncoder",
    "MalViTEncoder",
    "mal_decay",
    "mal_lr_factor",
    "per_sample_lr",
]
