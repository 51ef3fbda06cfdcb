"""``coco``: MS-COCO captions, read from a local copy in the official layout.

Layout, as the official zips unpack (https://cocodataset.org/#download)::

    <root>/annotations/captions_val2017.json    # captions_{split}.json (annotations_trainval2017.zip)
    <root>/val2017/000000000139.jpg             # {split}/ (val2017.zip); <root>/images/{split}/ also works

``split`` is any name with both parts present: ``val2017`` (5,000 images), ``train2017``,
``val2014`` (40,504), ``train2014``. The JSON has ``"images"`` (``id``, ``file_name``, ...)
and ``"annotations"`` (``image_id``, ``caption``, ...); images without a caption are left
out. Prompts are captions (about five per image: the first in file order, or one picked by
``subset_seed`` with ``caption = "random"``); there are no labels (text-conditioned).

Splits of the harness:
- ``reference`` (real images for FID, the prompts of ``sample_conditions``): ``max_items``
  images of ``split``, a subset drawn with ``subset_seed``;
- ``train`` (teacher training, pruning calibration and fine-tuning): ``train_items``
  images of ``train_split``; without ``train_split``, the images of ``split`` that are
  not in the reference set, so fine-tuning never sees a reference image.

The annotation file is checked at validation time (before any work); it is parsed on
first use, and the images of a split are checked and decoded when it is first loaded.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import MissingFileError, UserError
from plugins.datasets._images import (
    Item,
    LocalImageDataset,
    check_common_options,
    check_root,
    clean_caption,
    resolve_root,
    shared_option,
    write_fixture_images,
)

log = logging.getLogger(__name__)


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"captions_{split}.json"


def image_dir(root: Path, split: str) -> Path | None:
    """``<root>/{split}`` (the official layout) or ``<root>/images/{split}``, if present."""
    for cand in (root / split, root / "images" / split):
        if cand.is_dir():
            return cand
    return None


def layout(split: str) -> str:
    return f"<root>/annotations/captions_{split}.json with the images in <root>/{split}/ (COCO layout)"


def check_layout(root: Path, split: str) -> None:
    """Raise a one-line ``ValueError`` naming the missing part of the layout of ``split``."""
    check_root(root, layout(split))
    ann = annotation_file(root, split)
    if not ann.is_file():
        found = sorted(p.name for p in (root / "annotations").glob("captions_*.json"))
        also = f"; found: {', '.join(found)}" if found else ""
        raise ValueError(f"{ann} not found; expected {layout(split)}{also}")
    if image_dir(root, split) is None:
        raise ValueError(f"image folder {root / split} not found; expected {layout(split)}")


@dataclass
class Options:
    """Options of the ``coco`` dataset (``[dataset]`` keys)."""

    root: str = field(metadata={"help": "folder holding annotations/ and the image folders (~ and $VARS expanded)"})
    split: str = field(default="val2017", metadata={"help": "reference split: captions_{split}.json + {split}/"})
    train_split: str | None = field(
        default=None, metadata={"help": "split of load('train'); default: the rest of `split`, disjoint from the reference"}
    )
    max_items: int = shared_option("max_items")
    train_items: int = shared_option("train_items")
    image_size: int = shared_option("image_size")
    subset_seed: int = shared_option("subset_seed")
    caption: Literal["first", "random"] = shared_option("caption")

    def __post_init__(self) -> None:
        check_common_options(self)
        root = resolve_root(self.root)
        check_layout(root, self.split)
        if self.train_split is not None and self.train_split != self.split:
            check_layout(root, self.train_split)


def parse_captions(path: Path, images: Path, where: str) -> list[Item]:
    """The captioned images of a COCO captions file, by image id, captions in file order."""
    expected = "COCO captions JSON with 'images' [{id, file_name}] and 'annotations' [{image_id, caption}]"
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise MissingFileError(f"{where}: {path} not found; expected {expected}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        detail = f"{exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise UserError(f"{where}: {path} is not valid JSON ({detail}); expected {expected}") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: {path} holds a JSON {type(data).__name__}; expected {expected}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{where}: {path} has no '{key}' list; expected {expected}")
    files: dict[Any, str] = {}
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise UserError(f"{where}: {path}: images[{i}] needs an 'id' and a 'file_name'; expected {expected}")
        files[im["id"]] = im["file_name"]
    captions: dict[Any, list[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str) or "image_id" not in ann:
            raise UserError(f"{where}: {path}: annotations[{i}] needs an 'image_id' and a 'caption' "
                            f"(is {path.name} a captions_*.json file?)")
        if ann["image_id"] not in files:
            raise UserError(f"{where}: {path}: annotations[{i}] refers to image_id {ann['image_id']!r}, "
                            f"which is not in 'images'")
        captions.setdefault(ann["image_id"], []).append(clean_caption(ann["caption"]))
    uncaptioned = len(files) - len(captions)
    if uncaptioned:
        log.info("coco: %d images of %s have no caption and are left out", uncaptioned, path.name)
    # ids are ints in the official files; order numbers before any other key
    ids = sorted(captions, key=lambda k: (0, k, "") if isinstance(k, int) else (1, 0, str(k)))
    return [Item(key=str(k), path=images / files[k], captions=tuple(captions[k])) for k in ids]


class CocoDataset(LocalImageDataset):
    """MS-COCO captions (local copy, official layout): images with their captions as prompts."""

    name = "coco"
    Options = Options
    num_classes = None

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Six captioned images in the COCO layout under ``folder`` (harness.testing's contract)."""
        ids = list(range(1, 7))
        write_fixture_images(folder / "val2017", [f"{i:012d}.jpg" for i in ids])
        data = {
            "images": [{"id": i, "file_name": f"{i:012d}.jpg", "height": 16, "width": 24} for i in ids],
            "annotations": [{"id": 100 + i, "image_id": i, "caption": f"picture {i}"} for i in ids],
        }
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        annotation_file(folder, "val2017").write_text(json.dumps(data))
        return {"options": {"root": str(folder), "image_size": 16, "max_items": 4}}

    def layout(self) -> str:
        return layout(self.options.split)

    def content_files(self) -> list[Path]:
        splits = dict.fromkeys([self.options.split, self.options.train_split or self.options.split])
        return [annotation_file(self.root, s) for s in splits]

    def _split_items(self, split: str) -> list[Item]:
        images = image_dir(self.root, split) or self.root / split
        return parse_captions(annotation_file(self.root, split), images, self.where)
