"""Built-in datasets plugins (registered through the `bench` entry-point group)."""

from __future__ import annotations

from collections.abc import Callable

from harness import hookimpl


@hookimpl
def bench_register_datasets(register: Callable[[type], None]) -> None:
    """Register the built-in datasets (imported here: nothing heavy at import time)."""
    from plugins.datasets.coco import CocoDataset
    from plugins.datasets.digits import DigitsDataset
    from plugins.datasets.flickr8k import Flickr8kDataset
    from plugins.datasets.image_folder import ImageFolderDataset
    from plugins.models.synthetic import SyntheticDataset

    for cls in (DigitsDataset, SyntheticDataset, CocoDataset, Flickr8kDataset, ImageFolderDataset):
        register(cls)
