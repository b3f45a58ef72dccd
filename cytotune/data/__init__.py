"""The data layer: dataset registry and loaders, manifests and splits, sampling, decoded-image cache."""

from cytotune.data import loaders as _loaders  # noqa: F401  (registers the datasets)
from cytotune.data.cache import (
    ImageCache,
    TrainImages,
    eval_cache_path,
    image_cache_path,
    open_eval_cache,
    open_image_cache,
)
from cytotune.data.manifest import Manifest, find_manifest, prepare_dataset, scan_dataset
from cytotune.data.registry import DatasetListing, DatasetSpec, get_dataset, list_datasets, register_dataset
from cytotune.data.sampling import (
    few_shot_indices,
    fraction_indices,
    test_indices,
    train_indices,
    validation_indices,
)

__all__ = [
    "DatasetListing",
    "DatasetSpec",
    "ImageCache",
    "Manifest",
    "TrainImages",
    "eval_cache_path",
    "few_shot_indices",
    "find_manifest",
    "fraction_indices",
    "get_dataset",
    "image_cache_path",
    "list_datasets",
    "open_eval_cache",
    "open_image_cache",
    "prepare_dataset",
    "register_dataset",
    "scan_dataset",
    "test_indices",
    "train_indices",
    "validation_indices",
]
