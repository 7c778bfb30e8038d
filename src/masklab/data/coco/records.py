"""Typed records of a COCO instances file (images, categories, annotations, attributes).

These are what :func:`masklab.data.coco.load_coco` returns: every field already validated, so the
dataset, the evaluators and the doctor never look at raw JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from masklab.data.meta import AttributeMeta

# A COCO segmentation: polygons (list of flat xy lists), or RLE ({"size": [h, w], "counts": str | list}).
Segmentation = list[list[float]] | dict[str, object]


@dataclass(frozen=True)
class CocoImage:
    """One ``images`` entry.

    Attributes:
        id: image id.
        file_name: path relative to the image directory.
        height: image height in pixels.
        width: image width in pixels.
    """

    id: int
    file_name: str
    height: int
    width: int


@dataclass(frozen=True)
class CocoCategory:
    """One ``categories`` entry.

    Attributes:
        id: source category id (not necessarily contiguous).
        name: category name.
        supercategory: optional parent name ("" when absent).
        isthing: panoptic "thing" flag (True for instance files).
    """

    id: int
    name: str
    supercategory: str = ""
    isthing: bool = True


@dataclass(frozen=True)
class CocoAnnotation:
    """One ``annotations`` entry.

    Attributes:
        id: annotation id (unique in the file).
        image_id: id of an entry of ``images``.
        category_id: id of an entry of ``categories``.
        bbox: ``x, y, w, h`` box (w, h > 0).
        area: region area as written in the file (COCO size buckets use it); the mask area when
            the file leaves it out.
        iscrowd: crowd region (evaluated as "ignore", matched by intersection over detection area).
        segmentation: polygons or RLE, or None for box-only annotations.
        attributes: attribute name -> value id; attributes the annotation does not label are absent.
        score: detector confidence when the file holds detections (boxes used as prompts), else None.
    """

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float
    iscrowd: bool = False
    segmentation: Segmentation | None = None
    attributes: dict[str, int] = field(default_factory=dict)
    score: float | None = None


@dataclass(frozen=True)
class CocoSkipCounts:
    """How many annotations :func:`load_coco` dropped with ``on_bad="skip"``, per reason.

    Attributes:
        dangling_image: ``image_id`` not among the images.
        unknown_category: ``category_id`` not among the categories.
        bad_attribute: attribute name or value not in the metadata, or missing while required.
        bad_segmentation: degenerate polygon (fewer than 3 points, odd length, non-finite) or malformed
            RLE (wrong size, ``counts`` that do not decode to runs covering the image).
        bad_box: missing, non-finite, negative or zero-size box, or a ``score`` that is not a finite number.
        duplicate_id: annotation id already used by an earlier annotation (the first one is kept).
        empty_mask: a non-crowd instance whose mask has no pixel (collinear polygon, polygon outside
            the image, all-zero RLE).
    """

    dangling_image: int = 0
    unknown_category: int = 0
    bad_attribute: int = 0
    bad_segmentation: int = 0
    bad_box: int = 0
    duplicate_id: int = 0
    empty_mask: int = 0

    @property
    def total(self) -> int:
        """All skipped annotations."""
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        """Reason -> count, for logs and reports."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class CocoFile:
    """A validated COCO instances file.

    Attributes:
        path: where it was read from ("" for in-memory data); used in error messages.
        images: image records in file order.
        annotations: annotation records in file order (skipped ones removed).
        categories: category records in file order.
        attributes: attribute metadata from the top-level ``attributes`` list.
        skipped: counts of annotations dropped by ``on_bad="skip"``.
    """

    path: str
    images: tuple[CocoImage, ...]
    annotations: tuple[CocoAnnotation, ...]
    categories: tuple[CocoCategory, ...]
    attributes: tuple[AttributeMeta, ...] = ()
    skipped: CocoSkipCounts = field(default_factory=CocoSkipCounts)

    @property
    def category_ids(self) -> tuple[int, ...]:
        """Source category ids sorted ascending: contiguous label ``i`` is ``category_ids[i]``."""
        return tuple(sorted(c.id for c in self.categories))

    def category_by_id(self) -> dict[int, CocoCategory]:
        """Category id -> record."""
        return {c.id: c for c in self.categories}

    def image_by_id(self) -> dict[int, CocoImage]:
        """Image id -> record."""
        return {im.id: im for im in self.images}

    def annotations_by_image(self) -> dict[int, list[CocoAnnotation]]:
        """Image id -> its annotations in file order (every image present, possibly empty)."""
        out: dict[int, list[CocoAnnotation]] = {im.id: [] for im in self.images}
        for ann in self.annotations:
            out[ann.image_id].append(ann)
        return out
