"""``flickr8k``: Flickr8k captions, read from a local copy in the official layout.

Official layout (Flickr8k_Dataset.zip and Flickr8k_text.zip, unpacked into ``<root>``)::

    <root>/Flickr8k.token.txt           # "1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress ..."
    <root>/Flickr_8k.trainImages.txt    # 6,000 file names, one a line
    <root>/Flickr_8k.devImages.txt      # 1,000
    <root>/Flickr_8k.testImages.txt     # 1,000
    <root>/Flicker8k_Dataset/*.jpg      # sic (the official zip's spelling)

The zips are often unpacked into folders of their own names, and that works too: the
text files are read from ``<root>/`` or ``<root>/Flickr8k_text/`` (each file from the
first that holds it), the images from the first of ``<root>/Flicker8k_Dataset/``,
``<root>/Flickr8k_Dataset/Flicker8k_Dataset/``, ``<root>/Flickr8k_Dataset/`` and
``<root>/Images/`` that exists.

The Kaggle copy (``<root>/captions.txt``, a CSV with the header ``image,caption``, and
``<root>/Images/``) has no split files: use ``split = "all"`` and ``train_split = "all"``.
If both caption files are present, ``Flickr8k.token.txt`` is read. Entries of the token
file that are not image names (the official file lists ``2258277193_586949ec62.jpg.1``,
an image that is not in the zip) are skipped.

Prompts are captions (five per image: ``#0``, or one picked by ``subset_seed`` with
``caption = "random"``); there are no labels. ``reference`` = ``max_items`` images of
``split`` (seeded subset), ``train`` = ``train_items`` images of ``train_split``; when
both name the same split, train takes the images left out of the reference set.
"""

from __future__ import annotations

import csv
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
    is_image_name,
    resolve_root,
    shared_option,
    write_fixture_images,
)

log = logging.getLogger(__name__)

TOKEN_FILE = "Flickr8k.token.txt"
KAGGLE_FILE = "captions.txt"
#: folders that hold the text files, in the order they are searched ("" = the root)
TEXT_DIRS = ("", "Flickr8k_text")
#: image folders, first existing one wins (Flickr8k_Dataset.zip unpacked into its own name
#: gives the nested one)
IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset", "Flickr8k_Dataset", "Images")
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "dev": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
LAYOUT = (
    "<root>/Flickr8k.token.txt with the images in <root>/Flicker8k_Dataset/ and the split files "
    "<root>/Flickr_8k.{train,dev,test}Images.txt, the text files also in <root>/Flickr8k_text/ "
    "(Flickr8k layout), or <root>/captions.txt with <root>/Images/ (Kaggle layout)"
)


def text_file(root: Path, name: str) -> Path:
    """``name`` in the first of :data:`TEXT_DIRS` that holds it, else ``<root>/name``."""
    for folder in TEXT_DIRS:
        if (root / folder / name).is_file():
            return root / folder / name
    return root / name


def captions_file(root: Path) -> Path | None:
    for name in (TOKEN_FILE, KAGGLE_FILE):
        path = text_file(root, name)
        if path.is_file():
            return path
    return None


def image_dir(root: Path) -> Path | None:
    for name in IMAGE_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def check_layout(root: Path, split: str, train_split: str) -> None:
    """Raise a one-line ``ValueError`` naming the missing part of the layout."""
    check_root(root, LAYOUT)
    if captions_file(root) is None:
        raise ValueError(f"{root / TOKEN_FILE} not found (nor in {TEXT_DIRS[1]}/, nor {KAGGLE_FILE}); "
                         f"expected {LAYOUT}")
    if image_dir(root) is None:
        raise ValueError(f"image folder {root / IMAGE_DIRS[0]} not found (nor {', '.join(IMAGE_DIRS[1:])}); "
                         f"expected {LAYOUT}")
    if "all" in (split, train_split) and split != train_split:
        raise ValueError(f"split '{split}' and train_split '{train_split}' overlap; with 'all' set both to "
                         f"'all' (train then takes the images left out of the reference set)")
    for s in dict.fromkeys((split, train_split)):
        if s != "all" and not text_file(root, SPLIT_FILES[s]).is_file():
            raise ValueError(f"{root / SPLIT_FILES[s]} not found (nor in {TEXT_DIRS[1]}/); the split files come "
                             f"with Flickr8k_text.zip "
                             f"(expected {LAYOUT}); without them use split = \"all\" and train_split = \"all\"")


@dataclass
class Options:
    """Options of the ``flickr8k`` dataset (``[dataset]`` keys)."""

    root: str = field(metadata={"help": "folder holding the text files (or Flickr8k_text/) and the image folder "
                                        "(~ and $VARS expanded)"})
    split: Literal["train", "dev", "test", "all"] = field(
        default="test", metadata={"help": "reference split: train | dev | test | all"}
    )
    train_split: Literal["train", "dev", "test", "all"] = field(
        default="train", metadata={"help": "split of load('train'); the same as split: the rest of it"}
    )
    max_items: int = shared_option("max_items")
    train_items: int = shared_option("train_items")
    image_size: int = shared_option("image_size")
    subset_seed: int = shared_option("subset_seed")
    caption: Literal["first", "random"] = shared_option("caption")

    def __post_init__(self) -> None:
        check_common_options(self)
        check_layout(resolve_root(self.root), self.split, self.train_split)


def _read_text(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingFileError(f"{where}: {path} not found; expected {LAYOUT}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def parse_token_file(path: Path, where: str) -> dict[str, list[str]]:
    """``{image name: captions by #index}`` of ``Flickr8k.token.txt``."""
    found: dict[str, list[tuple[int, str]]] = {}
    skipped = set()
    for lineno, line in enumerate(_read_text(path, where).splitlines(), 1):
        if not line.strip():
            continue
        head, tab, caption = line.partition("\t")
        name, hash_, index = head.strip().partition("#")
        if not tab or not hash_ or not index.strip().isdigit():
            raise UserError(f"{where}: {path}:{lineno}: expected 'IMAGE.jpg#N<TAB>caption', got {line[:60]!r}")
        if not is_image_name(name):
            skipped.add(name)
            continue
        found.setdefault(name, []).append((int(index), clean_caption(caption)))
    if skipped:
        log.debug("flickr8k: skipped %d entries of %s that are not image names: %s",
                  len(skipped), path.name, ", ".join(sorted(skipped)))
    return {name: [c for _, c in sorted(caps, key=lambda x: x[0])] for name, caps in found.items()}


def parse_kaggle_file(path: Path, where: str) -> dict[str, list[str]]:
    """``{image name: captions in file order}`` of the Kaggle ``captions.txt`` (CSV ``image,caption``)."""
    rows = csv.reader(_read_text(path, where).splitlines())
    header = next(rows, [])
    if [h.strip().lower() for h in header[:2]] != ["image", "caption"]:
        raise UserError(f"{where}: {path}:1: expected the header 'image,caption', got {','.join(header)[:60]!r}")
    found: dict[str, list[str]] = {}
    for row in rows:
        lineno = rows.line_num
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) < 2 or not row[0].strip():
            raise UserError(f"{where}: {path}:{lineno}: expected 'IMAGE.jpg,caption', got {','.join(row)[:60]!r}")
        # a caption with unquoted commas spans several cells
        found.setdefault(row[0].strip(), []).append(clean_caption(",".join(row[1:])))
    return found


class Flickr8kDataset(LocalImageDataset):
    """Flickr8k (local copy, official or Kaggle layout): images with their captions as prompts."""

    name = "flickr8k"
    Options = Options
    num_classes = None

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._captions: dict[str, list[str]] | None = None

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Eight captioned images in the official Flickr8k layout under ``folder`` (harness.testing)."""
        names = [f"{1000 + i}_fixture.jpg" for i in range(8)]
        write_fixture_images(folder / IMAGE_DIRS[0], names)
        captions = [f"{n}#{k}\tpicture {n} , caption {k} .\n" for n in names for k in (0, 1)]
        (folder / TOKEN_FILE).write_text("".join(captions))
        for split, part in {"train": names[:4], "dev": names[4:6], "test": names[6:]}.items():
            (folder / SPLIT_FILES[split]).write_text("\n".join(part) + "\n")
        return {"options": {"root": str(folder), "image_size": 16}}

    def layout(self) -> str:
        return LAYOUT

    def content_files(self) -> list[Path]:
        files = [captions_file(self.root) or self.root / TOKEN_FILE]
        for s in dict.fromkeys((self.options.split, self.options.train_split)):
            if s != "all":
                files.append(text_file(self.root, SPLIT_FILES[s]))
        return files

    def captions(self) -> dict[str, list[str]]:
        if self._captions is None:
            path = captions_file(self.root)
            if path is None:
                raise MissingFileError(f"{self.where}: {self.root / TOKEN_FILE} not found; expected {LAYOUT}")
            parse = parse_token_file if path.name == TOKEN_FILE else parse_kaggle_file
            self._captions = parse(path, self.where)
        return self._captions

    def _split_items(self, split: str) -> list[Item]:
        captions = self.captions()
        images = image_dir(self.root) or self.root / IMAGE_DIRS[0]
        if split == "all":
            names = sorted(captions)
        else:
            path = text_file(self.root, SPLIT_FILES[split])
            names = []
            for lineno, line in enumerate(_read_text(path, self.where).splitlines(), 1):
                name = line.strip()
                if not name:
                    continue
                if name not in captions:
                    cap = captions_file(self.root)
                    raise UserError(f"{self.where}: {path}:{lineno}: {name} has no caption in "
                                    f"{cap.name if cap else TOKEN_FILE}")
                names.append(name)
            names = sorted(set(names))
        return [Item(key=n, path=images / n, captions=tuple(captions[n])) for n in names]
