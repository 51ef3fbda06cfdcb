"""``image_folder``: any folder of images, with optional captions and class subfolders.

Images: every ``.png``, ``.jpg``, ``.jpeg``, ``.webp`` and ``.bmp`` file (any letter case)
under ``root``, recursively; files and folders whose names start with ``.`` are skipped,
symlinked folders are not followed. Order: relative paths, sorted.

Captions (prompts): ``<root>/captions.csv`` if present, or the CSV named by ``captions``
(relative to ``root`` or absolute; ``captions = ""`` ignores any CSV). It has a header
with at least the columns ``file`` (path relative to ``root``, ``/``-separated) and
``caption``; a file may have several rows (several captions, chosen as ``caption``
says). With a CSV the dataset is the files it lists (other images in the folder are
ignored); a listed file that is missing is an error when its split is loaded.

Labels: with ``labels = "auto"`` (the default) the images are labelled by class folder
when none lies directly in ``root`` (``<root>/<class>/**/<image>``, as torchvision's
``ImageFolder``): classes are the sorted names of the first-level folders, labels their
indices, and ``num_classes`` their number. ``"folders"`` requires that layout, ``"none"``
never labels. Prompts without a CSV: ``prompt_template`` filled with the class name
(``_`` and ``-`` read as spaces) when labelled, else ``""`` (unconditional).

Splits: there is no official split, so the folder is split like ``digits``: ``max_items``
images are drawn with ``subset_seed`` (0 = all), and ``reference_fraction`` of them
(per class when labelled; at least one image) form ``reference``, the rest ``train``.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness import MissingFileError, UserError
from plugins.datasets._images import (
    Item,
    LocalImageDataset,
    Selection,
    check_common_options,
    check_root,
    choose_captions,
    clean_caption,
    is_image_name,
    limit,
    resolve_root,
    seeded_order,
    shared_option,
    write_fixture_images,
)

log = logging.getLogger(__name__)

DEFAULT_CAPTIONS = "captions.csv"
LAYOUT = (
    "image files (.png .jpg .jpeg .webp .bmp) under <root>, optionally in class folders "
    "<root>/<class>/, with an optional <root>/captions.csv (columns file,caption)"
)


def captions_path(root: Path, captions: str | None) -> Path | None:
    """The captions CSV to read, or ``None``."""
    if captions == "":
        return None
    if captions is None:
        default = root / DEFAULT_CAPTIONS
        return default if default.is_file() else None
    path = Path(os.path.expandvars(os.path.expanduser(captions)))
    return path if path.is_absolute() else root / path


@dataclass
class Options:
    """Options of the ``image_folder`` dataset (``[dataset]`` keys)."""

    root: str = field(metadata={"help": "folder of images (searched recursively; ~ and $VARS expanded)"})
    captions: str | None = field(
        default=None, metadata={"help": "captions CSV (file,caption); default: <root>/captions.csv if present; '' = none"}
    )
    labels: Literal["auto", "folders", "none"] = field(
        default="auto", metadata={"help": "class per first-level subfolder: auto | folders | none"}
    )
    prompt_template: str = field(default="a photo of a {}", metadata={"help": "prompt of a labelled image without captions"})
    max_items: int = field(default=0, metadata={"help": "images used (seeded subset); 0 = all"})
    reference_fraction: float = field(default=0.2, metadata={"help": "share of the images held out as reference"})
    image_size: int = shared_option("image_size")
    subset_seed: int = field(default=0, metadata={"help": "seed of the subset, the split (and caption = 'random')"})
    caption: Literal["first", "random"] = shared_option("caption")

    def __post_init__(self) -> None:
        check_common_options(self)
        if not 0.0 < self.reference_fraction <= 1.0:
            raise ValueError(f"reference_fraction must be in (0, 1], got {self.reference_fraction}")
        if "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' (the class name), got {self.prompt_template!r}")
        root = resolve_root(self.root)
        check_root(root, LAYOUT)
        path = captions_path(root, self.captions)
        if path is not None and not path.is_file():
            raise ValueError(f"captions file {path} not found; expected a CSV with columns file,caption")


def scan_images(root: Path) -> list[str]:
    """Relative (``/``-separated) paths of the image files under ``root``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for name in filenames:
            if not name.startswith(".") and is_image_name(name):
                found.append((rel / name).as_posix())
    return sorted(found)


def parse_captions_csv(path: Path, where: str) -> dict[str, list[str]]:
    """``{relative file: captions in file order}`` of a ``file,caption`` CSV."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MissingFileError(f"{where}: captions file {path} not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    if "file" not in fields or "caption" not in fields:
        raise UserError(f"{where}: {path}: expected a header with the columns 'file' and 'caption', "
                        f"got {','.join(fields)[:60]!r}")
    reader.fieldnames = fields
    found: dict[str, list[str]] = {}
    for row in reader:
        lineno = reader.line_num  # of the row's last line (a quoted caption may span lines)
        file = (row.get("file") or "").strip().replace("\\", "/")
        caption = row.get("caption")
        if not file and not (caption or "").strip():
            continue
        if not file or caption is None:
            raise UserError(f"{where}: {path}:{lineno}: expected a file and a caption")
        file = file[2:] if file.startswith("./") else file
        if file.startswith("/") or ".." in file.split("/") or ":" in file.split("/")[0]:
            raise UserError(f"{where}: {path}:{lineno}: {file!r} must be a path relative to the root folder")
        found.setdefault(file, []).append(clean_caption(caption))
    if not found:
        raise UserError(f"{where}: {path} lists no images; expected rows 'file,caption'")
    return found


class ImageFolderDataset(LocalImageDataset):
    """Any folder of images: optional captions CSV (prompts), class subfolders (labels)."""

    name = "image_folder"
    Options = Options

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._items: list[Item] | None = None
        self._classes: list[str] | None = None
        self._csv = captions_path(self.root, self.options.captions)

    @classmethod
    def contract_fixtures(cls, folder: Path) -> dict[str, Any]:
        """Six images in two class folders under ``folder`` (harness.testing's contract)."""
        names = [f"{c}/{i}.{ext}" for c in ("cat", "dog") for i, ext in enumerate(("png", "jpg", "png"))]
        write_fixture_images(folder, names)
        return {"options": {"root": str(folder), "image_size": 16}}

    def layout(self) -> str:
        return LAYOUT

    def content_files(self) -> list[Path]:
        return [self._csv] if self._csv is not None else []

    def content(self) -> dict[str, str]:
        """The captions CSV's SHA-256 and a digest of the image list (paths and sizes, not pixels)."""
        import hashlib

        listing = "\n".join(f"{it.key}\t{it.path.stat().st_size if it.path.is_file() else -1}" for it in self.items())
        return {**super().content(), "files": hashlib.sha256(listing.encode()).hexdigest()[:16]}

    # ------------------------------------------------------------------ items
    @property
    def num_classes(self) -> int | None:  # type: ignore[override]
        self.items()
        return len(self._classes) if self._classes is not None else None

    @property
    def classes(self) -> list[str] | None:
        """Class names (first-level folder names, sorted), or ``None`` when unlabelled."""
        self.items()
        return self._classes

    def items(self) -> list[Item]:
        if self._items is None:
            self._items, self._classes = self._scan()
        return self._items

    def _scan(self) -> tuple[list[Item], list[str] | None]:
        o = self.options
        captions = parse_captions_csv(self._csv, self.where) if self._csv is not None else None
        files = sorted(captions) if captions is not None else scan_images(self.root)
        if not files:
            raise UserError(f"{self.where}: no images found under {self.root}; expected {LAYOUT}")
        if captions is None:
            log.info("image_folder: %d images under %s", len(files), self.root)
        loose = [f for f in files if "/" not in f]
        labelled = o.labels == "folders" or (o.labels == "auto" and not loose)
        if o.labels == "folders" and loose:
            raise UserError(f"{self.where}: labels = 'folders' needs every image in a class folder "
                            f"<root>/<class>/; {self.root / loose[0]} is not")
        classes = sorted({f.split("/", 1)[0] for f in files}) if labelled else None
        index = {c: i for i, c in enumerate(classes or [])}
        items = []
        for f in files:
            path = self.root / f
            label = index[f.split("/", 1)[0]] if classes is not None else None
            if captions is not None:
                caps = tuple(captions[f])
            elif classes is not None:
                name = classes[label].replace("_", " ").replace("-", " ")  # type: ignore[index]
                caps = (o.prompt_template.format(name),)
            else:
                caps = ("",)
            items.append(Item(key=f, path=path, captions=caps, label=label))
        return items, classes

    def _select(self) -> Selection:
        o = self.options
        pool = self.items()
        prompts_all = choose_captions(pool, o.caption, o.subset_seed)
        order = seeded_order(len(pool), o.subset_seed)[: limit(len(pool), o.max_items)]
        groups: dict[int | None, list[int]] = {}
        for i in order:  # seeded order within each class
            groups.setdefault(pool[i].label, []).append(i)
        ref: list[int] = []
        for members in groups.values():
            ref.extend(members[: int(round(o.reference_fraction * len(members)))])
        if not ref:
            ref = order[:1]
        chosen = set(ref)
        train = [i for i in order if i not in chosen]
        idx = {"reference": sorted(ref), "train": sorted(train)}
        empty = (f"all {len(order)} images are in the reference set (reference_fraction = "
                 f"{o.reference_fraction}); lower reference_fraction or add images")
        return Selection(
            items={s: [pool[i] for i in v] for s, v in idx.items()},
            prompts={s: [prompts_all[i] for i in v] for s, v in idx.items()},
            empty_train=empty,
        )
