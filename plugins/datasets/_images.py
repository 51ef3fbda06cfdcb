"""Shared helpers of the datasets that read local image files (``coco``, ``flickr8k``, ``image_folder``).

Image preprocessing (one function, :func:`load_image`, so every dataset does the same):
decode with PIL, convert to RGB (grey, palette, CMYK and alpha images included; alpha is
dropped), take the centred square of side ``min(width, height)``, resize it to
``image_size`` x ``image_size`` with PIL's bicubic filter (antialiased when shrinking)
and keep 8 bits per channel. EXIF orientation is ignored: pixels are used as stored, as
COCO's annotations (``width``/``height``) and clean-fid do. ``load()`` returns float
N x 3 x S x S in [-1, 1] (``x / 127.5 - 1``).

Memory: an image is decoded, cropped and resized one at a time, so full-size images
never pile up; the resized set of each split is kept as uint8 (3 * S * S bytes per
image: 1,000 images at 256 px are 197 MB) and converted to float on each ``load()``.

Selection (:class:`LocalImageDataset`): the items of a split are put in a canonical
order (image id or file name), shuffled by ``subset_seed`` and cut; the chosen items are
returned in canonical order again. With the same seed a larger ``max_items`` gives a
superset of a smaller one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness import Conditions, Dataset, ImageBatch, MissingFileError, UserError, options_dict

log = logging.getLogger(__name__)

SPLITS = ("train", "reference")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGE_SIZE = 8

#: default and help of the options the local-image datasets spell the same way
_SHARED_OPTIONS: dict[str, tuple[Any, str]] = {
    "max_items": (1000, "reference images (seeded subset); 0 = all"),
    "train_items": (1000, "train images (seeded subset); 0 = all"),
    "image_size": (256, "side after centre crop and bicubic resize"),
    "subset_seed": (0, "seed of the subsets (and of caption = 'random')"),
    "caption": ("first", "caption used per image"),
}


@dataclass(frozen=True)
class Item:
    """One image of a split: ``key`` (canonical identity, e.g. the COCO image id), its file,
    its captions in file order (possibly none) and its class label (or ``None``)."""

    key: str
    path: Path
    captions: tuple[str, ...] = ()
    label: int | None = None


def resolve_root(root: str) -> Path:
    """``root`` with ``~`` and ``$VARS`` expanded, made absolute (relative to the current directory)."""
    return Path(os.path.expandvars(os.path.expanduser(str(root)))).resolve()


def clean_caption(text: Any) -> str:
    """A caption on one line, with runs of whitespace (COCO's trailing newlines) folded to one space."""
    return " ".join(str(text).split())


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def check_root(root: Path, expected: str) -> None:
    """Raise a one-line ``ValueError`` if ``root`` is not an existing folder (options validation)."""
    if not root.exists():
        raise ValueError(f"root {root} does not exist; expected {expected}")
    if not root.is_dir():
        raise ValueError(f"root {root} is not a folder; expected {expected}")


def check_common_options(options: Any) -> None:
    """Checks shared by the options of every local-image dataset (``ValueError``, one line)."""
    if options.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {options.image_size}")
    for name in ("max_items", "train_items"):
        value = getattr(options, name, 0)
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (0 = no limit), got {value}")


def shared_option(name: str) -> Any:
    """The dataclass field of an option every dataset that names it means the same way.

    ``coco`` and ``flickr8k`` (and, for ``image_size`` and ``caption``, ``image_folder``)
    take their defaults and help from here, so a default changed once changes for all.
    """
    default, help_text = _SHARED_OPTIONS[name]
    return field(default=default, metadata={"help": help_text})


def load_image(path: Path, size: int) -> torch.Tensor:
    """The image at ``path`` as uint8 3 x size x size: RGB, centre square, bicubic resize.

    Raises :class:`MissingFileError` naming the file if it is missing or unreadable.
    """
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            # crop and resize in one resampling pass (``box`` is the centred square)
            im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise MissingFileError(f"image {path} not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MissingFileError(f"cannot read image {path}: {' '.join(str(exc).split())}") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def file_digest(path: Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes: identifies annotation content across copies."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def write_fixture_images(folder: Path, names: list[str]) -> list[Path]:
    """Write tiny 24x16 RGB images, one distinct flat colour each (for ``contract_fixtures``).

    Non-square, so the centre crop of every dataset is exercised; the format follows each
    name's suffix (``.jpg`` or ``.png``).
    """
    from PIL import Image

    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 16), (40 + 35 * (i % 6), 230 - 30 * (i % 7), 60 + 50 * (i % 4))).save(path)
        paths.append(path)
    return paths


def seeded_order(n: int, seed: int, salt: int = 0) -> list[int]:
    """A permutation of ``range(n)`` fixed by ``(seed, salt)``."""
    gen = torch.Generator().manual_seed(_mix(seed, salt))
    return torch.randperm(n, generator=gen).tolist()


def _mix(seed: int, salt: int) -> int:
    return (int(seed) * 1_000_003 + int(salt)) % (2**63)


def limit(n: int, cap: int) -> int:
    """``min(n, cap)``, where ``cap == 0`` means no limit."""
    return n if cap == 0 else min(n, cap)


def choose_captions(items: list[Item], mode: str, seed: int, salt: int = 0) -> list[str]:
    """One caption per item: the first in file order, or one picked by ``(seed, salt)``.

    The pick for an item depends on its position in the whole (canonical) pool, not on
    the subset later cut from it. Items without captions get ``""``.
    """
    if mode == "first":
        return [it.captions[0] if it.captions else "" for it in items]
    gen = torch.Generator().manual_seed(_mix(seed, salt + 7))
    draws = torch.randint(0, 2**31 - 1, (len(items),), generator=gen).tolist()
    return [it.captions[d % len(it.captions)] if it.captions else "" for it, d in zip(items, draws)]


@dataclass
class Selection:
    """The items of ``train`` and ``reference`` (canonical order) with their prompts."""

    items: dict[str, list[Item]]
    prompts: dict[str, list[str]]
    #: why ``train`` is empty (the error message's reason), if it is
    empty_train: str = ""


class LocalImageDataset(Dataset):
    """Base of datasets read from a local folder (see the module docstring).

    Subclasses define ``Options`` (with ``root``, ``image_size``, ``max_items``,
    ``subset_seed`` and ``caption``), :meth:`_select` (or :meth:`_split_items` for the
    reference-first split below), :meth:`layout` and :meth:`content_files`.
    """

    channels = 3

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.root = resolve_root(self.options.root)
        self.image_size = int(self.options.image_size)
        self._selection: Selection | None = None
        self._decoded: dict[str, torch.Tensor] = {}
        self._content: dict[str, str] | None = None

    # ------------------------------------------------------------------ subclass API
    @property
    def where(self) -> str:
        return f"dataset.{self.name}"

    def layout(self) -> str:
        """The expected layout, for error messages (``<root>/...``)."""
        raise NotImplementedError

    def content_files(self) -> list[Path]:
        """Annotation files whose bytes identify the dataset's content (for ``config_key``)."""
        return []

    def _split_items(self, split: str) -> list[Item]:
        """The items of one named split (image and captions), for :meth:`_pools`."""
        raise NotImplementedError

    def _pools(self) -> tuple[list[Item], list[Item] | None]:
        """Items of the reference split and of a separate train split (``None``: the same split).

        For datasets with named splits (``split``, ``train_split`` options): an unset
        ``train_split`` or one equal to ``split`` means train takes the rest of ``split``.
        """
        o = self.options
        ref = self._split_items(o.split)
        if o.train_split is None or o.train_split == o.split:
            return ref, None
        return ref, self._split_items(o.train_split)

    def _select(self) -> Selection:
        """Reference first: ``max_items`` of the reference split (seeded), then ``train_items``
        of the train split, or of the rest of the reference split (disjoint) when they are the same."""
        o = self.options
        ref_pool, train_pool = self._pools()
        order = seeded_order(len(ref_pool), o.subset_seed)
        n_ref = limit(len(ref_pool), o.max_items)
        ref_idx = sorted(order[:n_ref])
        ref_prompts_all = choose_captions(ref_pool, o.caption, o.subset_seed)
        items = {"reference": [ref_pool[i] for i in ref_idx]}
        prompts = {"reference": [ref_prompts_all[i] for i in ref_idx]}
        empty = ""
        if train_pool is None:
            rest = order[n_ref:]
            train_idx = sorted(rest[: limit(len(rest), o.train_items)])
            items["train"] = [ref_pool[i] for i in train_idx]
            prompts["train"] = [ref_prompts_all[i] for i in train_idx]
            if not train_idx:
                empty = (f"all {len(ref_pool)} images of split '{o.split}' are in the reference set "
                         f"(max_items = {o.max_items}); lower max_items or set train_split to another split")
        else:
            # a separate split: leave out any image that is also a reference image
            ref_paths = {it.path for it in items["reference"]}
            kept = [it for it in train_pool if it.path not in ref_paths]
            train_prompts_all = choose_captions(kept, o.caption, o.subset_seed, salt=1)
            torder = seeded_order(len(kept), o.subset_seed, salt=1)
            train_idx = sorted(torder[: limit(len(kept), o.train_items)])
            items["train"] = [kept[i] for i in train_idx]
            prompts["train"] = [train_prompts_all[i] for i in train_idx]
            if not train_idx:
                empty = f"split '{o.train_split}' has no images outside the reference set"
        return Selection(items, prompts, empty)

    # ------------------------------------------------------------------ contract
    def selection(self) -> Selection:
        if self._selection is None:
            sel = self._select()
            if not sel.items["reference"]:
                raise UserError(f"{self.where}: no images selected for the reference set in {self.root}; "
                                f"expected {self.layout()}")
            self._selection = sel
        return self._selection

    def load(self, split: str) -> ImageBatch:
        """Images (float N x 3 x S x S in [-1, 1]) with the prompts (and labels) of ``split``."""
        if split not in SPLITS:
            raise ValueError(f"{self.name} has no split {split!r}; valid: {', '.join(SPLITS)}")
        sel = self.selection()
        items = sel.items[split]
        if not items:
            raise UserError(f"{self.where}: no images for the 'train' split: {sel.empty_train}")
        if split not in self._decoded:
            self._decoded[split] = self._decode(items, split)
        images = self._decoded[split].float().div_(127.5).sub_(1.0)
        return ImageBatch(images=images, conditions=self._conditions(items, sel.prompts[split]))

    def sample_conditions(self, n: int, generator: torch.Generator) -> Conditions:
        """Prompts (and labels) of reference images drawn by ``generator``: a random permutation
        of the reference set, repeated as often as needed for ``n`` (no image twice before
        every image was used once). Reads only the annotations, not the images."""
        sel = self.selection()
        pool = sel.items["reference"]
        reps = max(1, math.ceil(n / len(pool)))
        idx = torch.cat([torch.randperm(len(pool), generator=generator) for _ in range(reps)])[:n].tolist()
        return self._conditions([pool[i] for i in idx], [sel.prompts["reference"][i] for i in idx])

    def content(self) -> dict[str, str]:
        """What identifies the files' content: ``{file: SHA-256 prefix}`` of :meth:`content_files`."""
        return {str(p.relative_to(self.root)) if p.is_relative_to(self.root) else str(p): file_digest(p)
                for p in self.content_files()}

    def config_key(self) -> dict[str, Any]:
        """Name, options (``root`` resolved) and :meth:`content` (computed once per instance)."""
        if self._content is None:
            self._content = self.content()
        opts = options_dict(self.options)
        opts["root"] = str(self.root)
        return {"name": self.name, "options": opts, "content": dict(self._content)}

    # ------------------------------------------------------------------ helpers
    def _conditions(self, items: list[Item], prompts: list[str]) -> Conditions:
        labels = None
        if self.num_classes is not None:
            labels = torch.tensor([it.label for it in items], dtype=torch.long)
        return Conditions(labels=labels, prompts=list(prompts))

    def _decode(self, items: list[Item], split: str) -> torch.Tensor:
        missing = [it.path for it in items if not it.path.is_file()]
        if missing:
            raise MissingFileError(
                f"{self.where}: image {missing[0]} not found ({len(missing)} of the {len(items)} "
                f"{split} images are missing); expected {self.layout()}"
            )
        log.info("%s: decoding %d %s images at %d px", self.name, len(items), split, self.image_size)
        out = torch.empty((len(items), 3, self.image_size, self.image_size), dtype=torch.uint8)
        for i, it in enumerate(items):
            try:
                out[i] = load_image(it.path, self.image_size)
            except MissingFileError as exc:
                raise MissingFileError(f"{self.where}: {exc}") from None
        return out
