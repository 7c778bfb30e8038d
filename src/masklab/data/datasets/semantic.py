"""Semantic segmentation datasets read from an image folder and a label-map folder.

:class:`FolderSegDataset` follows MMSeg's ``BaseSegDataset`` conventions (suffix pairing, optional
split file, class subsets via a label map, ``reduce_zero_label``) so that Cityscapes, ADE20K and
VOC are thin subclasses that only set :attr:`FolderSegDataset.METAINFO` and default arguments.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from masklab.config.registries import DATASETS
from masklab.data.io import read_image, read_label
from masklab.data.meta import DatasetMeta, check_palette
from masklab.errors import DataError
from masklab.structures import Sample, SampleMeta

Transform = Callable[[Sample], Sample]


def label_lut(
    reduce_zero_label: bool, label_map: Mapping[int, int] | None, ignore_index: int = 255
) -> torch.Tensor:
    """A 256-entry lookup table from stored label values to training labels.

    ``reduce_zero_label`` runs first (0 -> ignore, v -> v - 1, ignore stays ignore), then
    ``label_map`` (MMSeg PR #2500 fixed exactly this order). Evaluators apply the same table to
    the original-resolution ground truth they read from ``meta.extra["seg_map_path"]``.
    """
    lut = torch.arange(256, dtype=torch.int64)
    if reduce_zero_label:
        lut = lut - 1
        lut[0] = ignore_index
        lut[ignore_index] = ignore_index
    if label_map:
        mapped = lut.clone()
        for src, dst in label_map.items():
            mapped[lut == int(src)] = int(dst)
        lut = mapped
    return lut


# Lossy formats move the class ids at every edge (and JPEG's 8x8 blocks anywhere), into wrong or
# non-existent classes; label maps must be stored losslessly.
_JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def _lossy_webp(path: Path) -> bool:
    """Whether a WebP file holds a lossy (``VP8 ``) bitstream; lossless WebP (``VP8L``) is fine."""
    try:
        with open(path, "rb") as f:
            if f.read(12)[8:12] != b"WEBP":
                return False
            while len(header := f.read(8)) == 8:
                fourcc, size = header[:4], int.from_bytes(header[4:], "little")
                if fourcc in (b"VP8 ", b"VP8L"):
                    return fourcc == b"VP8 "
                f.seek(size + (size & 1), 1)  # chunks are padded to an even size
    except OSError:
        return False  # unreadable: the label reader names the file
    return False


def check_lossless_labels(label: Path, owner: str) -> None:
    """Refuse label maps stored lossily (JPEG, lossy WebP); ``label`` is a dataset's first label file.

    Raises:
        DataError: naming ``<owner>.seg_map_suffix``, the file, and that labels must be lossless PNGs.
    """
    name = label.name.lower()
    if name.endswith(_JPEG_SUFFIXES):
        kind = "JPEG"
    elif name.endswith(".webp") and _lossy_webp(label):
        kind = "lossy WebP"
    else:
        return
    raise DataError(
        f"{owner}.seg_map_suffix: label maps are {kind} files (first: {label}); lossy compression turns "
        "class ids into wrong labels and phantom classes at every edge; expected lossless single-channel "
        "index PNGs (re-export the label maps as .png)"
    )


def _check_palette(name: str, palette: Sequence[Sequence[int]] | None, num_classes: int) -> None:
    if palette is not None:
        check_palette(palette, num_classes, f"{name}.palette", DataError)


@DATASETS.register()
class FolderSegDataset(Dataset):
    """Images in ``img_dir`` paired with single-channel label PNGs in ``ann_dir``.

    Without ``split``, every file under ``img_dir`` ending in ``img_suffix`` is used (recursively,
    sorted) and its label is the same relative path under ``ann_dir`` with ``seg_map_suffix``.
    With ``split``, each non-empty line of that file is a stem relative to both folders.

    Args:
        img_dir: folder of images.
        ann_dir: folder of label maps.
        img_suffix: image file ending.
        seg_map_suffix: label file ending; label maps must be lossless (JPEG and lossy WebP are
            refused: compression noise would become wrong labels).
        split: optional text file listing the stems to use (one stem per line; an empty file is
            an error).
        classes: class names. A subclass with :attr:`METAINFO` accepts a subset of its classes and
            maps the others to ``ignore_index``.
        palette: one RGB colour per class (generated when omitted).
        reduce_zero_label: label 0 becomes ignore and every other label shifts down by one.
        label_map: explicit stored-label -> training-label mapping (applied after reduce_zero_label);
            stored values 0..255 onto class ids or ``ignore_index``, checked before any file is read.
        ignore_index: label value that is not trained on nor evaluated.
        pipeline: transforms applied to each sample, in order.
        labels: False reads the images only (a test split without label maps, predicted for a
            benchmark server by ``masklab evaluate --format-only``): ``ann_dir`` and
            ``seg_map_suffix`` are not read and samples have no semantic map. The default requires
            a label map for every image.
    """

    METAINFO: DatasetMeta | None = None

    def __init__(
        self,
        img_dir: str | Path,
        ann_dir: str | Path,
        *,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        split: str | Path | None = None,
        classes: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        reduce_zero_label: bool = False,
        label_map: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        pipeline: Sequence[Transform] = (),
        labels: bool = True,
    ) -> None:
        self.img_dir = Path(img_dir)
        self.labels = labels
        self.ann_dir = Path(ann_dir)
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        self.reduce_zero_label = reduce_zero_label
        self.pipeline = list(pipeline)
        self.metainfo, subset_map = self._resolve_meta(classes, palette, ignore_index)
        if label_map:
            self._check_label_map(label_map)  # a config mistake: named before any file is read
        self.label_map = dict(label_map or {}) or subset_map
        self._lut = label_lut(reduce_zero_label, self.label_map, ignore_index)
        self.items = self._list_items(split)
        if not self.items:
            raise DataError(
                f"{type(self).__name__}.img_dir: no image found: {self.img_dir} holds no file ending in "
                f"{self.img_suffix!r} and no split file (every image is used); check img_dir, img_suffix and split"
            )
        if labels:
            check_lossless_labels(self.items[0][1], type(self).__name__)  # type: ignore[arg-type]

    def _check_label_map(self, label_map: Mapping[int, int]) -> None:
        """Every ``stored -> training`` pair maps an 8-bit value onto a class id or ``ignore_index``.

        A wrong target would otherwise surface as "label value 7 is outside [0, 3)" blamed on the
        first label file holding the stored value, although the files are right and the map is not.
        """
        meta, name = self.metainfo, type(self).__name__
        for src, dst in label_map.items():
            if not 0 <= int(src) <= 255:
                raise DataError(
                    f"{name}.label_map: {dict(label_map)} maps stored value {src}, which an 8-bit label "
                    "map cannot hold; expected stored values 0..255"
                )
            if not (0 <= int(dst) < meta.num_classes or int(dst) == meta.ignore_index):
                raise DataError(
                    f"{name}.label_map: {dict(label_map)} maps stored value {src} to {dst}, outside "
                    f"[0, {meta.num_classes}) and not ignore_index {meta.ignore_index}; expected class ids "
                    f"of {list(meta.classes)} (or {meta.ignore_index} to ignore the value)"
                )

    def _resolve_meta(
        self, classes: Sequence[str] | None, palette: Sequence[Sequence[int]] | None, ignore_index: int
    ) -> tuple[DatasetMeta, dict[int, int] | None]:
        """The dataset meta and, for a class subset of :attr:`METAINFO`, the label map it implies."""
        name = type(self).__name__
        base = self.METAINFO
        if classes is None:
            if base is None:
                raise DataError(f"{name}: 'classes' is required (no built-in class list for this dataset)")
            _check_palette(name, palette, len(base.classes))
            self.meta_source = f"{name} built-in classes"
            pal = base.palette if palette is None else tuple(tuple(p) for p in palette)
            return DatasetMeta(base.classes, pal, base.attributes, ignore_index), None
        classes = tuple(classes)
        _check_palette(name, palette, len(classes))
        self.meta_source = f"{name} 'classes' argument"
        subset_map = None
        if base is not None and classes != base.classes:
            unknown = [c for c in classes if c not in base.classes]
            if unknown:
                raise DataError(
                    f"{name}.classes: {unknown} not in the dataset's classes {list(base.classes)}"
                )
            # Old label -> new index for kept classes; everything else becomes ignore.
            subset_map = {
                i: (classes.index(c) if c in classes else ignore_index) for i, c in enumerate(base.classes)
            }
            if palette is None:
                palette = [base.palette[base.classes.index(c)] for c in classes]  # type: ignore[index]
        pal = None if palette is None else tuple(tuple(int(v) for v in p) for p in palette)
        return DatasetMeta(classes, pal, (), ignore_index), subset_map  # type: ignore[arg-type]

    def _list_items(self, split: str | Path | None) -> list[tuple[Path, Path | None]]:
        """(image, label) pairs from ``split`` or, without one, every image under ``img_dir``
        (label None for an images-only dataset)."""
        name = type(self).__name__
        if not self.img_dir.is_dir():
            raise DataError(f"{name}.img_dir: {self.img_dir} is not a directory")
        if self.labels and not self.ann_dir.is_dir():
            raise DataError(f"{name}.ann_dir: {self.ann_dir} is not a directory")
        if split is not None:
            return self._pair(self._read_split(split), self.ann_dir, Path(split))
        n = len(self.img_suffix)
        stems = sorted(
            str(p.relative_to(self.img_dir))[:-n] for p in self.img_dir.rglob(f"*{self.img_suffix}")
        )
        return self._pair(stems, self.ann_dir, None)

    def _read_split(self, split: str | Path) -> list[str]:
        """The non-empty, stripped lines of a split file (stems relative to img_dir / ann_dir).

        Raises:
            DataError: the file is missing or lists no stem.
        """
        split_path = Path(split)
        if not split_path.is_file():
            raise DataError(f"{type(self).__name__}.split: {split_path} not found")
        stems = [line.strip() for line in split_path.read_text().splitlines() if line.strip()]
        if not stems:
            raise DataError(
                f"{type(self).__name__}.split: the split file {split_path} lists no stem (it is empty); "
                f"expected one stem per line, a file name under {self.img_dir} without {self.img_suffix!r}"
            )
        return stems

    def _pair(
        self, stems: Sequence[str], ann_dir: Path, split: Path | None
    ) -> list[tuple[Path, Path | None]]:
        """(image, label) paths of ``stems`` (listed by ``split``, or found under img_dir when None);
        for an images-only dataset (image, None), the images still checked.

        Raises:
            DataError: one line counting the stems whose image or label is missing, naming the
                split file (or ann_dir) and the first such stem's missing files.
        """
        if not self.labels:
            images = [self.img_dir / f"{s}{self.img_suffix}" for s in stems]
            absent = [(stem, img) for stem, img in zip(stems, images, strict=True) if not img.is_file()]
            if absent:  # only a split file can name an image that is not there
                counted = "1 stem" if len(absent) == 1 else f"{len(absent)} stems"
                raise DataError(
                    f"{type(self).__name__}.split: the split file {split} lists {counted} (of "
                    f"{len(stems)}) whose image is missing, first {absent[0][0]!r}: image {absent[0][1]} "
                    "not found; check img_dir and img_suffix"
                )
            return [(img, None) for img in images]
        items = [
            (self.img_dir / f"{s}{self.img_suffix}", ann_dir / f"{s}{self.seg_map_suffix}") for s in stems
        ]
        missing = [
            (stem, img, seg)
            for stem, (img, seg) in zip(stems, items, strict=True)
            if not img.is_file() or not seg.is_file()
        ]
        if not missing:
            return items  # type: ignore[return-value]
        name, (stem, img, seg) = type(self).__name__, missing[0]
        if split is None:  # the image was found under img_dir: only its label can be missing
            raise DataError(
                f"{name}.ann_dir: {len(missing)} of {len(stems)} images under {self.img_dir} have no label "
                f"map, first: {img} expects {seg}; check ann_dir and seg_map_suffix"
            )
        absent = " and ".join(
            f"{kind} {p}" for kind, p in (("image", img), ("label", seg)) if not p.is_file()
        )
        counted = "1 stem" if len(missing) == 1 else f"{len(missing)} stems"
        raise DataError(
            f"{name}.split: the split file {split} lists {counted} (of {len(stems)}) whose files are "
            f"missing, first {stem!r}: {absent} not found; check img_dir, ann_dir and the suffixes"
        )

    def __len__(self) -> int:
        return len(self.items)

    def load_label(self, path: str | Path) -> torch.Tensor:
        """Read a stored label map and turn it into training labels; out-of-range values raise.

        Raises:
            DataError: naming the file and the offending value when a label is neither a class
                index nor ``ignore_index``.
        """
        raw = read_label(path)
        raw_max = int(raw.max()) if raw.numel() else 0
        if raw_max >= self._lut.numel():
            raise DataError(
                f"{path}: label value {raw_max} exceeds 255; expected class ids < {self.metainfo.num_classes}"
            )
        label = self._lut[raw]
        ignore = self.metainfo.ignore_index
        top = int(torch.where(label == ignore, 0, label).max()) if label.numel() else 0
        if top >= self.metainfo.num_classes or int(label.min()) < 0:
            bad = top if top >= self.metainfo.num_classes else int(label.min())
            raise DataError(
                f"{path}: label value {bad} is outside [0, {self.metainfo.num_classes}) and is not ignore_index {ignore}"
                + (" (after reduce_zero_label/label_map)" if self.reduce_zero_label or self.label_map else "")
            )
        return label

    def load_sample(self, index: int) -> Sample:
        """The sample at ``index`` before the pipeline."""
        img_path, seg_path = self.items[index]
        image = read_image(img_path)
        h, w = image.shape[-2:]
        if seg_path is None:  # images only: nothing to evaluate against
            meta = SampleMeta(
                image_id=index,
                file_name=str(img_path),
                ori_shape=(int(h), int(w)),
                img_shape=(int(h), int(w)),
            )
            return Sample(image=image, meta=meta)
        semantic = self.load_label(seg_path)
        if tuple(semantic.shape) != (h, w):
            raise DataError(
                f"{seg_path}: label size {tuple(semantic.shape)} differs from image {img_path} size {(h, w)}"
            )
        meta = SampleMeta(
            image_id=index,
            file_name=str(img_path),
            ori_shape=(int(h), int(w)),
            img_shape=(int(h), int(w)),
            extra={
                "seg_map_path": str(seg_path),
                "reduce_zero_label": self.reduce_zero_label,
                "label_map": self.label_map,
                "ignore_index": self.metainfo.ignore_index,
            },
        )
        return Sample(image=image, meta=meta, semantic=semantic)

    def __getitem__(self, index: int) -> Sample:
        sample = self.load_sample(index)
        for transform in self.pipeline:
            sample = transform(sample)
        return sample


@DATASETS.register()
class SyntheticSemanticDataset(FolderSegDataset):
    """The semantic view of a ``masklab data synth`` dataset (classes from its ``meta.json``).

    Args:
        root: the folder passed to ``masklab data synth --out``.
        split: ``"train"`` or ``"val"``.
        pipeline: transforms applied to each sample, in order.
        labels: False reads the images only (see :class:`FolderSegDataset`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        pipeline: Sequence[Transform] = (),
        labels: bool = True,
    ) -> None:
        root = Path(root)
        meta_path = root / "meta.json"
        if not meta_path.is_file():
            raise DataError(
                f"{meta_path}: not found; create the dataset with `masklab data synth --out {root}`"
            )
        try:
            meta = DatasetMeta.from_json(json.loads(meta_path.read_text()), where=str(meta_path))
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{meta_path}: invalid JSON ({exc.msg}; line {exc.lineno}, column {exc.colno})"
            ) from None
        if split not in ("train", "val"):
            raise DataError(f"SyntheticSemanticDataset.split: {split!r}; expected 'train' or 'val'")
        super().__init__(
            root / "images" / split,
            root / "labels" / split,
            img_suffix=".png",
            seg_map_suffix=".png",
            classes=meta.classes,
            palette=meta.palette,
            ignore_index=meta.ignore_index,
            pipeline=pipeline,
            labels=labels,
        )
        # Keep the attributes too: instance-level consumers read them from the same meta.
        self.metainfo = meta
        self.meta_source = str(meta_path)
