"""The datasets read from local copies: ``coco``, ``flickr8k``, ``image_folder``.

Fixtures are written into ``tmp_path`` in each dataset's real format: a handful of
generated images (a solid colour square per image, padded with black bars to a
non-square size, so the centre crop is visible) and the annotation files. The
``make_*`` functions are also used by ``tests/test_contracts.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError, MissingFileError, UserError
from plugins.datasets.coco import CocoDataset
from plugins.datasets.flickr8k import Flickr8kDataset
from plugins.datasets.image_folder import ImageFolderDataset

S = 16  # image_size of the tests

# --------------------------------------------------------------------------- fixtures


def colour(i: int) -> tuple[int, int, int]:
    """A distinct colour per image index, far from black."""
    return (40 + 35 * (i % 6), 230 - 30 * (i % 7), 60 + 50 * (i % 4))


def write_image(path: Path, i: int, wide: bool = True) -> None:
    """A 48x32 (or 32x48) image: a 32x32 square of ``colour(i)`` between two black bars."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    size = (48, 32) if wide else (32, 48)
    im = Image.new("RGB", size, (0, 0, 0))
    im.paste(Image.new("RGB", (32, 32), colour(i)), (8, 0) if wide else (0, 8))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix.lower()]
    im.save(path, fmt, **({"quality": 98} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}))


def coco_captions(image_id: int) -> list[str]:
    return [f"caption {k} of coco image {image_id}" for k in range(3)]


def make_coco(root: Path, split: str = "val2017", ids: tuple[int, ...] = (139, 285, 632, 724, 776, 785)) -> Path:
    """A COCO captions layout: annotations/captions_{split}.json + {split}/{id:012d}.jpg."""
    images, annotations = [], []
    for i, image_id in enumerate(ids):
        name = f"{image_id:012d}.jpg"
        write_image(root / split / name, image_id, wide=i % 2 == 0)
        images.append({"license": 1, "file_name": name, "coco_url": "", "height": 32 if i % 2 == 0 else 48,
                       "width": 48 if i % 2 == 0 else 32, "date_captured": "", "flickr_url": "", "id": image_id})
    ann_id = 1000
    for image_id in reversed(ids):  # annotations are not sorted by image in the real files
        for caption in coco_captions(image_id):
            annotations.append({"image_id": image_id, "id": ann_id, "caption": caption + " \n"})
            ann_id += 1
    data = {"info": {}, "licenses": [], "images": images, "annotations": annotations}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return root


FLICKR = [f"{1000268201 + 17 * i}_{i:02d}3b08cb0e.jpg" for i in range(8)]
FLICKR_SPLITS = {"train": FLICKR[:4], "dev": FLICKR[4:6], "test": FLICKR[6:]}


def flickr_caption(name: str, k: int) -> str:
    return f"A child number {k} , seen in {name.split('_')[0]} ."


def make_flickr8k(root: Path, layout: str = "official", image_dir: str | None = None, text_dir: str = "") -> Path:
    """Flickr8k: the official token file + split files (in ``root/text_dir``) + Flicker8k_Dataset/,
    or Kaggle's captions.txt + Images/."""
    folder = root / (image_dir or ("Flicker8k_Dataset" if layout == "official" else "Images"))
    for i, name in enumerate(FLICKR):
        write_image(folder / name, i, wide=i % 2 == 1)
    if layout == "official":
        text = root / text_dir
        text.mkdir(parents=True, exist_ok=True)
        lines = [f"{name}#{k}\t{flickr_caption(name, k)}" for name in FLICKR for k in (2, 0, 1)]
        # the real file lists an image that is not in the zip, with a non-image name
        lines.insert(3, "2258277193_586949ec62.jpg.1#0\tA dog runs .")
        (text / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
        for split, names in FLICKR_SPLITS.items():
            (text / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    else:
        with open(root / "captions.txt", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "caption"])
            for name in FLICKR:
                for k in range(3):
                    writer.writerow([name, flickr_caption(name, k).replace(" ,", ", quoted,")])
    return root


FOLDER_CLASSES = {"cat": ["a.png", "b.jpg", "sub/c.jpeg"], "dog_house": ["d.webp", "e.bmp", "f.PNG"]}


def make_image_folder(root: Path, labelled: bool = True, captions: bool = False) -> Path:
    """Six images of five formats, in class folders (``cat``, ``dog_house``) or flat; optional captions.csv."""
    files = [f"{c}/{f}" if labelled else f"{c}_{f.replace('/', '_')}" for c, fs in FOLDER_CLASSES.items() for f in fs]
    for i, rel in enumerate(files):
        write_image(root / rel, i, wide=i % 2 == 0)
    (root / ".hidden").mkdir(parents=True, exist_ok=True)
    write_image(root / ".hidden" / "x.png", 9)
    (root / "notes.txt").write_text("not an image")
    if captions:
        with open(root / "captions.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["file", "caption", "source"])
            for rel in files:
                writer.writerow([rel, f"a picture of {rel}, first", "gen"])
                writer.writerow([rel, f"a picture of {rel}, second", "gen"])
    return root


def mean_colour(image: torch.Tensor) -> tuple[float, ...]:
    """Mean RGB (0..255) of one image of a batch in [-1, 1]."""
    return tuple(((image + 1) * 127.5).mean(dim=(1, 2)).tolist())


def which(image: torch.Tensor, candidates: list[int]) -> int:
    """The index i whose ``colour(i)`` is closest to the image's mean colour."""
    got = torch.tensor(mean_colour(image))
    return min(candidates, key=lambda i: float((got - torch.tensor(colour(i), dtype=torch.float)).abs().sum()))


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- coco


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return make_coco(tmp_path / "coco")


def test_coco_loads_images_with_their_captions(coco_root: Path) -> None:
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=4, train_items=0)
    ref = ds.load("reference")
    assert ref.images.shape == (4, 3, S, S) and ref.images.dtype == torch.float32
    assert float(ref.images.min()) >= -1.0 and float(ref.images.max()) <= 1.0
    assert ds.channels == 3 and ds.num_classes is None and ds.image_size == S
    assert ref.conditions.labels is None
    ids = (139, 285, 632, 724, 776, 785)
    for image, prompt in zip(ref.images, ref.conditions.prompts):
        image_id = which(image, list(ids))
        # the prompt is the image's first caption, whitespace folded
        assert prompt == coco_captions(image_id)[0]
        # the centre crop dropped the black bars: the whole image is the square's colour
        assert max(abs(a - b) for a, b in zip(mean_colour(image), colour(image_id))) < 4
        assert float(((image + 1) * 127.5).amin()) > 20
    # canonical order (by image id) whatever the subset
    got = [int(p.rsplit(" ", 1)[1]) for p in ref.conditions.prompts]
    assert got == sorted(got)


def test_coco_train_is_the_rest_of_the_split_disjoint_from_reference(coco_root: Path) -> None:
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=4)
    ref, train = ds.load("reference").conditions.prompts, ds.load("train").conditions.prompts
    assert len(ref) == 4 and len(train) == 2
    assert not set(ref) & set(train)
    assert {int(p.rsplit(" ", 1)[1]) for p in ref + train} == {139, 285, 632, 724, 776, 785}
    assert len(CocoDataset(root=str(coco_root), image_size=S, max_items=2, train_items=3).load("train").images) == 3


def test_coco_train_split_reads_another_annotation_file(coco_root: Path) -> None:
    make_coco(coco_root, split="train2017", ids=(9, 25, 30))
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=0, train_split="train2017")
    assert len(ds.load("reference").images) == 6
    train = ds.load("train")
    assert train.conditions.prompts == [coco_captions(i)[0] for i in (9, 25, 30)]
    assert [which(im, [9, 25, 30]) for im in train.images] == [9, 25, 30]


def test_coco_seeded_subset_is_deterministic_nested_and_seed_dependent(coco_root: Path) -> None:
    def ref(seed: int, n: int) -> list[str]:
        ds = CocoDataset(root=str(coco_root), image_size=S, max_items=n, subset_seed=seed)
        return ds.selection().prompts["reference"]

    assert ref(0, 3) == ref(0, 3)
    assert len({tuple(ref(s, 3)) for s in range(4)}) > 1
    assert set(ref(1, 2)) <= set(ref(1, 4))
    a = CocoDataset(root=str(coco_root), image_size=S, max_items=3, subset_seed=5).load("reference")
    b = CocoDataset(root=str(coco_root), image_size=S, max_items=3, subset_seed=5).load("reference")
    assert torch.equal(a.images, b.images) and a.conditions.prompts == b.conditions.prompts


def test_coco_random_caption_is_one_of_the_images_captions(coco_root: Path) -> None:
    first = CocoDataset(root=str(coco_root), image_size=S, max_items=0).selection().prompts["reference"]
    rand = CocoDataset(root=str(coco_root), image_size=S, max_items=0, caption="random").selection()
    again = CocoDataset(root=str(coco_root), image_size=S, max_items=0, caption="random").selection()
    assert rand.prompts == again.prompts
    for item, prompt in zip(rand.items["reference"], rand.prompts["reference"]):
        assert prompt in coco_captions(int(item.key))
    assert rand.prompts["reference"] != first


def test_coco_sample_conditions_depend_only_on_the_generator_and_read_no_image(coco_root: Path) -> None:
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=4)
    ref_prompts = ds.selection().prompts["reference"]
    for path in (coco_root / "val2017").iterdir():
        path.unlink()  # annotations only: conditions never decode images
    a = ds.sample_conditions(10, torch.Generator().manual_seed(3))
    b = CocoDataset(root=str(coco_root), image_size=S, max_items=4).sample_conditions(10, torch.Generator().manual_seed(3))
    c = ds.sample_conditions(10, torch.Generator().manual_seed(4))
    assert a.labels is None and len(a) == 10 and a.prompts == b.prompts and a.prompts != c.prompts
    # every reference caption once before any twice
    assert sorted(a.prompts[:4]) == sorted(ref_prompts) and sorted(a.prompts[4:8]) == sorted(ref_prompts)


def test_coco_config_key_identifies_content(coco_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = CocoDataset(root=str(coco_root), image_size=S).config_key()
    assert key["name"] == "coco" and key["options"]["root"] == str(coco_root.resolve())
    monkeypatch.chdir(coco_root.parent)
    assert CocoDataset(root="coco", image_size=S).config_key() == key  # same folder, other spelling
    assert CocoDataset(root="coco", image_size=S, max_items=3).config_key() != key
    ann = coco_root / "annotations" / "captions_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["caption"] = "another caption"
    ann.write_text(json.dumps(data))
    assert CocoDataset(root="coco", image_size=S).config_key() != key


def test_coco_missing_root_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        CocoDataset(root=str(tmp_path / "nowhere"))
    assert one_line(exc) == (
        f"dataset.coco: root {tmp_path / 'nowhere'} does not exist; expected "
        "<root>/annotations/captions_val2017.json with the images in <root>/val2017/ (COCO layout)"
    )


def test_coco_missing_annotation_file_names_it_and_what_is_there(coco_root: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        CocoDataset(root=str(coco_root), split="val2014")
    assert one_line(exc) == (
        f"dataset.coco: {coco_root / 'annotations' / 'captions_val2014.json'} not found; expected "
        "<root>/annotations/captions_val2014.json with the images in <root>/val2014/ (COCO layout); "
        "found: captions_val2017.json"
    )
    with pytest.raises(ConfigError, match=r"captions_train2017.json not found"):
        CocoDataset(root=str(coco_root), train_split="train2017")


def test_coco_missing_image_folder(coco_root: Path) -> None:
    (coco_root / "val2017").rename(coco_root / "elsewhere")
    with pytest.raises(ConfigError) as exc:
        CocoDataset(root=str(coco_root))
    assert one_line(exc).startswith(f"dataset.coco: image folder {coco_root / 'val2017'} not found; expected ")


def test_coco_images_subfolder_is_accepted(coco_root: Path) -> None:
    (coco_root / "images").mkdir()
    (coco_root / "val2017").rename(coco_root / "images" / "val2017")
    assert len(CocoDataset(root=str(coco_root), image_size=S, max_items=2).load("reference").images) == 2


COCO_FORMAT = "expected COCO captions JSON with 'images' [{id, file_name}] and 'annotations' [{image_id, caption}]"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"images": [', f" is not valid JSON (Expecting value at line 1 column 13); {COCO_FORMAT}"),
        ("[]", f" holds a JSON list; {COCO_FORMAT}"),
        ('{"images": []}', f" has no 'annotations' list; {COCO_FORMAT}"),
        ('{"images": [{"id": 1}], "annotations": []}', f": images[0] needs an 'id' and a 'file_name'; {COCO_FORMAT}"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}]}',
         ": annotations[0] needs an 'image_id' and a 'caption' (is captions_val2017.json a captions_*.json file?)"),
        ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}',
         ": annotations[0] refers to image_id 2, which is not in 'images'"),
    ],
)
def test_coco_malformed_annotations_name_the_file_and_the_problem(coco_root: Path, content: str, message: str) -> None:
    ann = coco_root / "annotations" / "captions_val2017.json"
    ann.write_text(content)
    ds = CocoDataset(root=str(coco_root), image_size=S)  # the file exists: validation passes
    with pytest.raises(UserError) as exc:
        ds.load("reference")
    assert one_line(exc) == f"dataset.coco: {ann}{message}"


def test_coco_missing_image_is_named(coco_root: Path) -> None:
    (coco_root / "val2017" / "000000000285.jpg").unlink()
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=0)
    with pytest.raises(MissingFileError) as exc:
        ds.load("reference")
    assert one_line(exc) == (
        f"dataset.coco: image {coco_root / 'val2017' / '000000000285.jpg'} not found (1 of the 6 reference images "
        "are missing); expected <root>/annotations/captions_val2017.json with the images in <root>/val2017/ (COCO layout)"
    )


def test_coco_unreadable_image_is_named(coco_root: Path) -> None:
    (coco_root / "val2017" / "000000000285.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MissingFileError) as exc:
        CocoDataset(root=str(coco_root), image_size=S, max_items=0).load("reference")
    assert one_line(exc).startswith(f"dataset.coco: cannot read image {coco_root / 'val2017' / '000000000285.jpg'}: ")


def test_coco_empty_train_says_why(coco_root: Path) -> None:
    ds = CocoDataset(root=str(coco_root), image_size=S, max_items=0)
    with pytest.raises(UserError) as exc:
        ds.load("train")
    assert one_line(exc) == (
        "dataset.coco: no images for the 'train' split: all 6 images of split 'val2017' are in the reference set "
        "(max_items = 0); lower max_items or set train_split to another split"
    )


def test_bad_option_values(coco_root: Path) -> None:
    with pytest.raises(ConfigError, match=r"^dataset.coco: image_size must be >= 8, got 4$"):
        CocoDataset(root=str(coco_root), image_size=4)
    with pytest.raises(ConfigError, match=r"^dataset.coco: max_items must be >= 0 \(0 = no limit\), got -1$"):
        CocoDataset(root=str(coco_root), max_items=-1)
    with pytest.raises(ConfigError, match=r"^dataset.coco.caption: 'frist' is not valid \(did you mean 'first'\?\)"):
        CocoDataset(root=str(coco_root), caption="frist")
    with pytest.raises(ConfigError, match=r"^dataset.coco.root: required option of 'coco' is missing$"):
        CocoDataset()


def test_load_rejects_unknown_split(coco_root: Path) -> None:
    with pytest.raises(ValueError, match="coco has no split 'val'; valid: train, reference"):
        CocoDataset(root=str(coco_root), image_size=S).load("val")


# --------------------------------------------------------------------------- flickr8k


@pytest.fixture
def flickr_root(tmp_path: Path) -> Path:
    return make_flickr8k(tmp_path / "flickr8k")


def test_flickr8k_official_layout(flickr_root: Path) -> None:
    ds = Flickr8kDataset(root=str(flickr_root), image_size=S)
    ref, train = ds.load("reference"), ds.load("train")
    assert ref.images.shape == (2, 3, S, S) and train.images.shape == (4, 3, S, S)
    assert float(ref.images.min()) >= -1.0 and float(ref.images.max()) <= 1.0
    assert ref.conditions.labels is None and ds.num_classes is None
    # #0 is the first caption even though the file lists #2 first
    assert ref.conditions.prompts == [flickr_caption(n, 0) for n in FLICKR_SPLITS["test"]]
    assert train.conditions.prompts == [flickr_caption(n, 0) for n in FLICKR_SPLITS["train"]]
    assert [which(im, list(range(8))) for im in ref.images] == [6, 7]
    dev = Flickr8kDataset(root=str(flickr_root), image_size=S, split="dev", train_split="dev", max_items=1)
    assert len(dev.load("reference").images) == 1 and len(dev.load("train").images) == 1
    assert set(dev.selection().prompts["reference"] + dev.selection().prompts["train"]) == {
        flickr_caption(n, 0) for n in FLICKR_SPLITS["dev"]}


@pytest.mark.parametrize("folder", ["Flickr8k_Dataset", "Images", "Flickr8k_Dataset/Flicker8k_Dataset"])
def test_flickr8k_other_image_folder_names(tmp_path: Path, folder: str) -> None:
    root = make_flickr8k(tmp_path, image_dir=folder)
    assert len(Flickr8kDataset(root=str(root), image_size=S).load("reference").images) == 2


@pytest.mark.parametrize("image_dir", ["Flicker8k_Dataset", "Flickr8k_Dataset/Flicker8k_Dataset"])
def test_flickr8k_zips_unpacked_into_folders_of_their_names(tmp_path: Path, image_dir: str) -> None:
    # Flickr8k_text.zip unpacked into <root>/Flickr8k_text/: the same images, prompts and splits
    plain = Flickr8kDataset(root=str(make_flickr8k(tmp_path / "plain")), image_size=S)
    root = make_flickr8k(tmp_path / "unpacked", image_dir=image_dir, text_dir="Flickr8k_text")
    assert not (root / "Flickr8k.token.txt").exists() and not (root / "Flickr_8k.testImages.txt").exists()
    ds = Flickr8kDataset(root=str(root), image_size=S)
    for split in ("reference", "train"):
        a, b = plain.load(split), ds.load(split)
        assert torch.equal(a.images, b.images) and a.conditions.prompts == b.conditions.prompts
    assert [which(im, list(range(8))) for im in ds.load("reference").images] == [6, 7]
    assert set(ds.content()) == {"Flickr8k_text/Flickr8k.token.txt", "Flickr8k_text/Flickr_8k.testImages.txt",
                                 "Flickr8k_text/Flickr_8k.trainImages.txt"}
    # a split file given at the root as well as in Flickr8k_text/: the root's copy is read
    (root / "Flickr_8k.testImages.txt").write_text(FLICKR_SPLITS["test"][0] + "\n")
    assert Flickr8kDataset(root=str(root), image_size=S).load("reference").conditions.prompts == [
        flickr_caption(FLICKR_SPLITS["test"][0], 0)]


def test_flickr8k_text_folder_missing_split_file_is_one_line(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path, text_dir="Flickr8k_text")
    (root / "Flickr8k_text" / "Flickr_8k.trainImages.txt").unlink()
    with pytest.raises(ConfigError) as exc:
        Flickr8kDataset(root=str(root))
    assert one_line(exc).startswith(
        f"dataset.flickr8k: {root / 'Flickr_8k.trainImages.txt'} not found (nor in Flickr8k_text/); the split "
        "files come with Flickr8k_text.zip (expected ")
    assert len(Flickr8kDataset(root=str(root), image_size=S, train_split="dev").load("train").images) == 2


def test_flickr8k_all_skips_token_entries_that_are_not_images(flickr_root: Path) -> None:
    ds = Flickr8kDataset(root=str(flickr_root), image_size=S, split="all", train_split="all", max_items=5,
                         caption="random", subset_seed=2)
    sel = ds.selection()
    assert len(sel.items["reference"]) == 5 and len(sel.items["train"]) == 3
    assert {it.key for it in sel.items["reference"] + sel.items["train"]} == set(FLICKR)
    for it, prompt in zip(sel.items["reference"], sel.prompts["reference"]):
        assert prompt in [flickr_caption(it.key, k) for k in range(3)]


def test_flickr8k_kaggle_layout(tmp_path: Path) -> None:
    root = make_flickr8k(tmp_path, layout="kaggle")
    ds = Flickr8kDataset(root=str(root), image_size=S, split="all", train_split="all", max_items=6)
    ref = ds.load("reference")
    assert ref.images.shape == (6, 3, S, S)
    # a quoted caption keeps its commas
    assert all(p.startswith("A child number 0, quoted, seen in") for p in ref.conditions.prompts)
    with pytest.raises(ConfigError) as exc:
        Flickr8kDataset(root=str(root))
    assert one_line(exc) == (
        f"dataset.flickr8k: {root / 'Flickr_8k.testImages.txt'} not found (nor in Flickr8k_text/); the split "
        "files come with Flickr8k_text.zip (expected <root>/Flickr8k.token.txt with the images in "
        "<root>/Flicker8k_Dataset/ and the split files <root>/Flickr_8k.{train,dev,test}Images.txt, the text "
        "files also in <root>/Flickr8k_text/ (Flickr8k layout), or <root>/captions.txt with <root>/Images/ "
        '(Kaggle layout)); without them use split = "all" and train_split = "all"'
    )
    captions = root / "captions.txt"
    captions.write_text("img;text\n" + captions.read_text().split("\n", 1)[1])
    with pytest.raises(UserError) as exc:
        Flickr8kDataset(root=str(root), split="all", train_split="all").load("reference")
    assert one_line(exc) == f"dataset.flickr8k: {captions}:1: expected the header 'image,caption', got 'img;text'"


def test_flickr8k_sample_conditions(flickr_root: Path) -> None:
    ds = Flickr8kDataset(root=str(flickr_root), image_size=S)
    a = ds.sample_conditions(5, torch.Generator().manual_seed(0))
    b = ds.sample_conditions(5, torch.Generator().manual_seed(0))
    assert a.prompts == b.prompts and a.labels is None
    # sample i's prompt does not depend on how many samples are drawn
    assert ds.sample_conditions(9, torch.Generator().manual_seed(0)).prompts[:5] == a.prompts
    assert set(a.prompts) == {flickr_caption(n, 0) for n in FLICKR_SPLITS["test"]}


def test_flickr8k_missing_parts_are_one_line(flickr_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        Flickr8kDataset(root=str(tmp_path / "none"))
    assert one_line(exc).startswith(f"dataset.flickr8k: root {tmp_path / 'none'} does not exist; expected "
                                    "<root>/Flickr8k.token.txt with the images in <root>/Flicker8k_Dataset/")
    (flickr_root / "Flickr8k.token.txt").rename(flickr_root / "tokens.bak")
    with pytest.raises(ConfigError) as exc:
        Flickr8kDataset(root=str(flickr_root))
    assert one_line(exc).startswith(
        f"dataset.flickr8k: {flickr_root / 'Flickr8k.token.txt'} not found (nor in Flickr8k_text/, nor "
        "captions.txt); expected ")
    (flickr_root / "tokens.bak").rename(flickr_root / "Flickr8k.token.txt")
    (flickr_root / "Flicker8k_Dataset").rename(flickr_root / "pictures")
    with pytest.raises(ConfigError) as exc:
        Flickr8kDataset(root=str(flickr_root))
    assert one_line(exc).startswith(
        f"dataset.flickr8k: image folder {flickr_root / 'Flicker8k_Dataset'} not found "
        "(nor Flickr8k_Dataset/Flicker8k_Dataset, Flickr8k_Dataset, Images); expected ")
    (flickr_root / "pictures").rename(flickr_root / "Flicker8k_Dataset")
    with pytest.raises(ConfigError, match=r"dataset.flickr8k: split 'all' and train_split 'train' overlap"):
        Flickr8kDataset(root=str(flickr_root), split="all")


def test_flickr8k_malformed_files(flickr_root: Path) -> None:
    token = flickr_root / "Flickr8k.token.txt"
    lines = token.read_text().splitlines()
    token.write_text("\n".join([*lines[:2], "1000268201_693b08cb0e.jpg A child", *lines[2:]]))
    with pytest.raises(UserError) as exc:
        Flickr8kDataset(root=str(flickr_root), image_size=S).load("reference")
    assert one_line(exc) == (f"dataset.flickr8k: {token}:3: expected 'IMAGE.jpg#N<TAB>caption', "
                             "got '1000268201_693b08cb0e.jpg A child'")
    token.write_text("\n".join(lines))
    split = flickr_root / "Flickr_8k.testImages.txt"
    split.write_text(split.read_text() + "999_unknown.jpg\n")
    with pytest.raises(UserError) as exc:
        Flickr8kDataset(root=str(flickr_root), image_size=S).load("reference")
    assert one_line(exc) == f"dataset.flickr8k: {split}:3: 999_unknown.jpg has no caption in Flickr8k.token.txt"


def test_flickr8k_missing_image_is_named(flickr_root: Path) -> None:
    missing = flickr_root / "Flicker8k_Dataset" / FLICKR_SPLITS["test"][1]
    missing.unlink()
    ds = Flickr8kDataset(root=str(flickr_root), image_size=S)
    assert len(ds.load("train").images) == 4  # other splits still load
    with pytest.raises(MissingFileError) as exc:
        ds.load("reference")
    assert one_line(exc).startswith(f"dataset.flickr8k: image {missing} not found (1 of the 2 reference images "
                                    "are missing); expected <root>/Flickr8k.token.txt")


# --------------------------------------------------------------------------- image_folder


def test_image_folder_class_subfolders_give_labels(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    ds = ImageFolderDataset(root=str(root), image_size=S, reference_fraction=0.34)
    assert ds.num_classes == 2 and ds.classes == ["cat", "dog_house"]
    ref, train = ds.load("reference"), ds.load("train")
    # one of three per class (stratified), the rest train; hidden folders and non-images skipped
    assert ref.conditions.labels.tolist() == [0, 1] and sorted(train.conditions.labels.tolist()) == [0, 0, 1, 1]
    assert ref.images.shape == (2, 3, S, S) and train.images.shape == (4, 3, S, S)
    assert float(train.images.min()) >= -1.0 and float(train.images.max()) <= 1.0
    prompts = {0: "a photo of a cat", 1: "a photo of a dog house"}
    assert ref.conditions.prompts == [prompts[v] for v in ref.conditions.labels.tolist()]
    cond = ds.sample_conditions(7, torch.Generator().manual_seed(1))
    assert cond.labels.tolist() and set(cond.labels.tolist()) <= {0, 1}
    assert cond.prompts == [prompts[v] for v in cond.labels.tolist()]
    # the six files, in sorted relative-path order across both splits
    keys = sorted(it.key for s in ("train", "reference") for it in ds.selection().items[s])
    assert keys == ["cat/a.png", "cat/b.jpg", "cat/sub/c.jpeg", "dog_house/d.webp", "dog_house/e.bmp", "dog_house/f.PNG"]
    for it, image in zip(ds.selection().items["train"], train.images):
        assert which(image, list(range(6))) == keys.index(it.key)


def test_image_folder_flat_without_captions_is_unconditional(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", labelled=False)
    ds = ImageFolderDataset(root=str(root), image_size=S, max_items=5, reference_fraction=0.4)
    ref, train = ds.load("reference"), ds.load("train")
    assert ds.num_classes is None and ref.conditions.labels is None
    assert len(ref.images) == 2 and len(train.images) == 3 and ref.conditions.prompts == ["", ""]


def test_image_folder_captions_csv(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", labelled=False, captions=True)
    ds = ImageFolderDataset(root=str(root), image_size=S, reference_fraction=0.5)
    sel = ds.selection()
    for split in ("train", "reference"):
        for it, prompt in zip(sel.items[split], sel.prompts[split]):
            assert prompt == f"a picture of {it.key}, first"
    rand = ImageFolderDataset(root=str(root), image_size=S, reference_fraction=0.5, caption="random").selection()
    assert all(p.startswith(f"a picture of {it.key}, ") for it, p in zip(rand.items["train"], rand.prompts["train"]))
    # class folders and captions together: labels from folders, prompts from the CSV
    labelled = make_image_folder(tmp_path / "both", labelled=True, captions=True)
    both = ImageFolderDataset(root=str(labelled), image_size=S).load("reference")
    assert both.conditions.labels is not None and both.conditions.prompts[0].startswith("a picture of ")
    # captions = "" ignores the CSV
    plain = ImageFolderDataset(root=str(labelled), image_size=S, captions="")
    assert plain.selection().prompts["reference"][0].startswith("a photo of a ")


def test_image_folder_csv_lists_the_dataset_and_missing_files_are_named(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", labelled=False, captions=True)
    (root / "cat_a.png").unlink()
    ds = ImageFolderDataset(root=str(root), image_size=S, reference_fraction=1.0, labels="none")
    with pytest.raises(MissingFileError) as exc:
        ds.load("reference")
    assert one_line(exc).startswith(f"dataset.image_folder: image {root / 'cat_a.png'} not found (1 of the 6 "
                                    "reference images are missing); expected image files")
    with pytest.raises(UserError) as exc:
        ds.load("train")
    assert one_line(exc) == ("dataset.image_folder: no images for the 'train' split: all 6 images are in the "
                             "reference set (reference_fraction = 1.0); lower reference_fraction or add images")


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        ImageFolderDataset(root=str(tmp_path / "none"))
    assert one_line(exc).startswith(f"dataset.image_folder: root {tmp_path / 'none'} does not exist; expected image")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as exc:
        ImageFolderDataset(root=str(empty)).load("reference")
    assert one_line(exc).startswith(f"dataset.image_folder: no images found under {empty}; expected image files")
    with pytest.raises(ConfigError) as exc:
        ImageFolderDataset(root=str(empty), captions="caps.csv")
    assert one_line(exc) == (f"dataset.image_folder: captions file {empty / 'caps.csv'} not found; "
                             "expected a CSV with columns file,caption")
    flat = make_image_folder(tmp_path / "flat", labelled=False)
    with pytest.raises(UserError) as exc:
        ImageFolderDataset(root=str(flat), labels="folders").load("reference")
    assert one_line(exc) == (f"dataset.image_folder: labels = 'folders' needs every image in a class folder "
                             f"<root>/<class>/; {flat / 'cat_a.png'} is not")
    (flat / "captions.csv").write_text("path,text\ncat_a.png,a cat\n")
    with pytest.raises(UserError) as exc:
        ImageFolderDataset(root=str(flat)).load("reference")
    assert one_line(exc) == (f"dataset.image_folder: {flat / 'captions.csv'}: expected a header with the columns "
                             "'file' and 'caption', got 'path,text'")
    (flat / "captions.csv").write_text("file,caption\n../x.png,a cat\n")
    with pytest.raises(UserError, match=r"captions.csv:2: '../x.png' must be a path relative to the root folder$"):
        ImageFolderDataset(root=str(flat)).load("reference")
    with pytest.raises(ConfigError, match=r"reference_fraction must be in \(0, 1\], got 0.0$"):
        ImageFolderDataset(root=str(flat), reference_fraction=0.0)


def test_image_folder_config_key_follows_the_file_list(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs")
    key = ImageFolderDataset(root=str(root), image_size=S).config_key()
    write_image(root / "cat" / "g.png", 7)
    assert ImageFolderDataset(root=str(root), image_size=S).config_key() != key


# --------------------------------------------------------------------------- harness integration


def test_registered_and_listed(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.cli import main

    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("coco", "flickr8k", "image_folder", "digits", "synthetic"):
        assert f"│ {name} " in out
    assert "root: str = '(required)'" in out and "split: str = 'val2017'" in out


MATRIX = """
[benchmark]
name = "real"

[dataset]
name = "{name}"
root = "{root}"
image_size = 8
{extra}

[model]
name = "synthetic"

[sampling]
steps = 2
num_samples = 4
batch_size = 4

[matrix]
pruning_method = ["none", "magnitude"]
pruning_rate = [0.5]

[metrics]
names = ["noise_prediction_mse", "generation_time"]

[execution]
device = "cpu"
"""


def test_matrix_with_a_wrong_root_fails_validation_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.format(name="coco", root=tmp_path / "no_coco", extra=""))
    assert main(["run", str(matrix), "--dry-run", "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {matrix}: dataset: root {tmp_path / 'no_coco'} does not exist; expected "
                   "<root>/annotations/captions_val2017.json with the images in <root>/val2017/ (COCO layout)\n")
    assert not (tmp_path / "res").exists()
    # a swept option is checked per value
    make_coco(tmp_path / "coco")
    matrix.write_text(MATRIX.format(name="coco", root=tmp_path / "coco", extra="")
                      .replace('[0.5]', '[0.5]\n"dataset.split" = ["val2017", "val2014"]'))
    assert main(["plan", str(matrix), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matrix.dataset.split[1]: " in err and "captions_val2014.json not found" in err


@pytest.mark.parametrize("name", ["coco", "flickr8k", "image_folder"])
def test_a_matrix_runs_on_each_dataset(tmp_path: Path, name: str) -> None:
    """Reference images (noise_prediction_mse), prompts (sample_conditions) and pruning calibration (train)."""
    from harness import load_results, runner

    root = {"coco": make_coco, "flickr8k": make_flickr8k, "image_folder": make_image_folder}[name](tmp_path / name)
    extra = "max_items = 4" if name == "coco" else ""
    matrix = tmp_path / "m.toml"
    matrix.write_text(MATRIX.format(name=name, root=root, extra=extra))
    summary = runner.run(matrix, [], results_dir=str(tmp_path / "res"), quiet=True)
    assert (summary.ok, summary.error) == (2, 0), summary.errors
    df = load_results(tmp_path / "res")
    assert set(df["dataset"]) == {name} and df["value"].notna().all()
