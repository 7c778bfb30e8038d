"""Joint image / semantic map / instance transforms (``Sample -> Sample``); importing registers them."""

from masklab.data.transforms.base import Compose, apply_geometric, finalize_instances
from masklab.data.transforms.crop_pad import Pad, RandomCrop, RandomFlip, RandomRotate90, pad_to
from masklab.data.transforms.photometric import PhotoMetricDistortion
from masklab.data.transforms.resize import LargeScaleJitter, RandomResize, Resize, rescale_size, resize_to

__all__ = [
    "Compose",
    "LargeScaleJitter",
    "Pad",
    "PhotoMetricDistortion",
    "RandomCrop",
    "RandomFlip",
    "RandomResize",
    "RandomRotate90",
    "Resize",
    "apply_geometric",
    "finalize_instances",
    "pad_to",
    "rescale_size",
    "resize_to",
]
