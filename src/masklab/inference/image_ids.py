"""COCO image ids for inference results, matched to the input files by name.

``masklab infer --input DIR`` numbers its inputs 0, 1, ...; a user who wants to score the results
against a COCO ground truth (``masklab evaluate coco --gt GT.json --pred instances.json``) needs the
ground truth's ids instead. ``--image-ids GT.json`` gives them: each input is looked up by its path
relative to the input folder, then by its base name when that is unique in the file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from masklab.errors import DataError


def coco_image_ids(path: str | Path) -> dict[str, int]:
    """``{file_name: id}`` of a COCO file's ``images``, plus ``{base name: id}`` for unique base names."""
    from masklab.data.coco.load import read_json

    data = read_json(Path(path))
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise DataError(f"{path}: expected a COCO file with an 'images' list")
    ids: dict[str, int] = {}
    for i, image in enumerate(images):
        name, image_id = (
            (image.get("file_name"), image.get("id")) if isinstance(image, dict) else (None, None)
        )
        if not isinstance(name, str) or not isinstance(image_id, int) or isinstance(image_id, bool):
            raise DataError(f"{path}: images[{i}]: expected an int 'id' and a str 'file_name'")
        ids[PurePosixPath(name).as_posix()] = image_id
    bases = Counter(PurePosixPath(name).name for name in list(ids))
    for name, image_id in list(ids.items()):
        base = PurePosixPath(name).name
        if bases[base] == 1:
            ids.setdefault(base, image_id)
    return ids


def lookup_image_ids(relatives: Sequence[str], ids: Mapping[str, int], source: str) -> list[int]:
    """The COCO id of each input (by relative path, then base name); one line for the first miss."""
    found: list[int] = []
    for relative in relatives:
        key = PurePosixPath(relative).as_posix()
        image_id = ids.get(key, ids.get(PurePosixPath(key).name))
        if image_id is None:
            raise DataError(
                f"{source}: no image with file_name {key!r} (nor a unique base name "
                f"{PurePosixPath(key).name!r}); --image-ids must list every input"
            )
        found.append(image_id)
    return found
