"""Image data sets as whole in-memory numpy arrays, offline.

Every split comes back as float32 images of shape (N, H, W, C) with values in
[0, 1], plus int32 labels where the data set has them.

`digits` is scikit-learn's bundled 8×8 handwritten digits and needs nothing
beyond scikit-learn. The other data sets come from TensorFlow Datasets (the
`vaejax[datasets]` extra), which is imported only when one of them is loaded.
vaejax never downloads: TFDS prepares a data set once from a folder holding
the files it would otherwise fetch (the "manual folder"), then reads it from
its cache (`data_dir`) on every later call.

Where the data live:

* `data_dir`: the TFDS cache of prepared data sets; the argument, else the
  environment variable `VAEJAX_DATA_DIR`, else `~/tensorflow_datasets`.
* `manual_dir`: the argument, else the environment variable
  `VAEJAX_MANUAL_DIR`; a parent folder with one sub-folder per data set
  (`<manual_dir>/mnist/train-images-idx3-ubyte.gz`, ...), or the data set's
  own folder.

The data treatments (`BINARIZATIONS`) are defined here, once:

| treatment | what the model sees | for likelihoods |
|---|---|---|
| "none" | the grey levels k/(L−1) as stored | discrete ones over the L levels |
| "static" | pixels thresholded once at 0.5: a fixed binary data set | Bernoulli |
| "dynamic" | fresh Bernoulli(x) pixels every training batch | Bernoulli |
| "dequantize" | y = (k + u)/L, u ~ U[0, 1), fresh every training batch | densities on [0, 1] |

Per-batch draws run on the device (`binarize_batch`, called by the trainer);
the test split is drawn once, with DYNAMIC_TEST_SEED, so every run is scored on
the same images. L is the data set's number of grey levels (`LEVELS`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

KNOWN_DATASETS: tuple[str, ...] = (
    "digits", "mnist", "binarized_mnist", "fashion_mnist", "cifar10")

# The digits split: a permutation of the 1797 images drawn with this seed;
# its first DIGITS_TEST_SIZE entries are the test split, the other 1497 train.
DIGITS_SEED = 0
DIGITS_TEST_SIZE = 300

BINARIZATIONS: tuple[str, ...] = ("none", "static", "dynamic", "dequantize")
# The key that binarizes (or dequantises) the test split of a run, once.
DYNAMIC_TEST_SEED = 20140101
# Grey levels per pixel as stored: digits are 0..16, the TFDS images 8-bit.
LEVELS = {"digits": 17, "mnist": 256, "binarized_mnist": 2, "fashion_mnist": 256, "cifar10": 256}

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class _TfdsSource(NamedTuple):
    """What a TFDS builder offers and which files it prepares from."""

    splits: tuple[str, ...]
    files: tuple[str, ...]
    url: str
    divisor: float  # maps the stored uint8 pixels onto [0, 1]


_TFDS_SOURCES = {
    "mnist": _TfdsSource(
        ("train", "test"), _MNIST_FILES,
        "https://storage.googleapis.com/cvdf-datasets/mnist/", 255.0),
    # Stored as uint8 0/1, not 0/255.
    "binarized_mnist": _TfdsSource(
        ("train", "validation", "test"),
        ("binarized_mnist_train.amat", "binarized_mnist_valid.amat",
         "binarized_mnist_test.amat"),
        "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
        1.0),
    "fashion_mnist": _TfdsSource(
        ("train", "test"), _MNIST_FILES,
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", 255.0),
    "cifar10": _TfdsSource(
        ("train", "test"), ("cifar-10-binary.tar.gz",),
        "https://www.cs.toronto.edu/~kriz/", 255.0),
}


class DataError(ValueError):
    """Bad input or missing data, with a message that says how to fix it."""


class Split(NamedTuple):
    """One split of a data set.

    Attributes:
      images: float32, shape (N, H, W, C), values in [0, 1].
      labels: int32, shape (N,); None when the data set has no labels.
    """

    images: np.ndarray
    labels: np.ndarray | None


class Dataset(NamedTuple):
    """A data set's train and test splits.

    Attributes:
      name: one of KNOWN_DATASETS.
      train: the training split.
      test: the test split.
      is_binary: True when every pixel is exactly 0 or 1.
    """

    name: str
    train: Split
    test: Split
    is_binary: bool


def check_images(images: np.ndarray, name: str = "images") -> None:
    """Checks that images are a finite (N, H, W, C) array with values in [0, 1].

    Args:
      images: the array to check.
      name: what to call it in the error message.

    Raises:
      DataError: naming the first problem found.
    """
    array = np.asarray(images)
    if array.ndim != 4:
        raise DataError(
            f"{name} must have shape (N, H, W, C), got shape {array.shape}")
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.integer)
            or np.issubdtype(array.dtype, np.floating)):
        raise DataError(f"{name} must be real numbers, got dtype {array.dtype}")
    if array.size == 0:
        raise DataError(f"{name} is empty, shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"{name} contains {_count_non_finite(array)}")
    low, high = array.min(), array.max()
    if low < 0 or high > 1:
        hint = " (8-bit pixels need dividing by 255)" if high > 1 else ""
        raise DataError(
            f"{name} must lie in [0, 1], found values from {low} to {high}{hint}")


def load_split(name: str, split: str, *, data_dir: str | None = None,
               manual_dir: str | None = None) -> Split:
    """Loads one split of a data set into memory.

    Args:
      name: one of KNOWN_DATASETS.
      split: "train" or "test"; "validation" for binarized_mnist.
      data_dir: the TFDS cache of prepared data (see the module docstring);
        unused for digits.
      manual_dir: a folder holding the data set's files, or a parent of a
        folder named after the data set; needed only until TFDS has prepared
        the data set in data_dir. Unused for digits.

    Returns:
      the split, images float32 (N, H, W, C) in [0, 1], labels int32 or None.

    Raises:
      DataError: for an unknown data set or split, missing data or files, a
        missing tensorflow_datasets, or images outside [0, 1].
    """
    _check_name(name)
    _check_split(name, split)
    if name == "digits":
        images, labels = _load_digits(split)
    else:
        images, labels = _load_tfds(name, split, data_dir, manual_dir)
    check_images(images, f"{name} {split} images")
    return Split(images, labels)


def load(name: str, *, binarization: str = "none", data_dir: str | None = None,
         manual_dir: str | None = None) -> Dataset:
    """Loads a data set's train and test splits.

    Args:
      name: one of KNOWN_DATASETS.
      binarization: "none" keeps grey levels in [0, 1]; "static" replaces each
        pixel x by x > 0.5, once, for a fixed binary data set; "dynamic" and
        "dequantize" keep the training split grey (the trainer draws per batch)
        and draw the test split once with DYNAMIC_TEST_SEED.
      data_dir: the TFDS cache of prepared data, as in load_split.
      manual_dir: the folder of the data set's files, as in load_split.

    Returns:
      the Dataset; is_binary is True where every split is binary.

    Raises:
      DataError: for an unknown binarization, or as load_split.
    """
    _check_name(name)
    _check_binarization(binarization)
    train, test = (treated(name, split, binarization,
                           load_split(name, split, data_dir=data_dir, manual_dir=manual_dir))
                   for split in ("train", "test"))
    is_binary = name == "binarized_mnist" or binarization == "static"
    return Dataset(name, train, test, is_binary)


def treated(name: str, split_name: str, binarization: str, split: Split) -> Split:
    """A split as `load` returns it: thresholded under "static"; a test split drawn once
    with DYNAMIC_TEST_SEED under "dynamic" and "dequantize"."""
    if binarization == "static":
        return _binarize(split)
    if split_name == "test" and binarization in ("dynamic", "dequantize"):
        import jax
        draws = binarize_batch(jax.random.PRNGKey(DYNAMIC_TEST_SEED), split.images, binarization,
                               LEVELS[name])
        return Split(np.asarray(draws, np.float32), split.labels)
    return split


def binarize_batch(key, x, binarization: str, levels: int = 256):
    """A training batch as the model sees it: Bernoulli(x) pixels under "dynamic",
    (k + u)/levels with k = x·(levels − 1) under "dequantize", else x."""
    if binarization not in ("dynamic", "dequantize"):
        return x
    import jax
    import jax.numpy as jnp
    if binarization == "dynamic":
        return jax.random.bernoulli(key, x).astype(x.dtype)
    k = jnp.round(x * (levels - 1))
    return ((k + jax.random.uniform(key, jnp.shape(x), x.dtype)) / levels).astype(x.dtype)


def _check_name(name: str) -> None:
    """Raises DataError unless name is one of KNOWN_DATASETS."""
    if name not in KNOWN_DATASETS:
        raise DataError(
            f"unknown data set {name!r}; known: {', '.join(KNOWN_DATASETS)}")


def _splits(name: str) -> tuple[str, ...]:
    """The split names a data set offers."""
    return ("train", "test") if name == "digits" else _TFDS_SOURCES[name].splits


def _check_split(name: str, split: str) -> None:
    """Raises DataError unless the data set offers the split."""
    if split not in _splits(name):
        raise DataError(
            f"{name} has no split {split!r}; available: {', '.join(_splits(name))}")


def _check_binarization(binarization: str) -> None:
    """Raises DataError unless binarization is one of BINARIZATIONS."""
    if binarization not in BINARIZATIONS:
        raise DataError(f"binarization must be one of {', '.join(map(repr, BINARIZATIONS))}, "
                        f"got {binarization!r}")


def _binarize(split: Split) -> Split:
    """Thresholds the pixels at 0.5, keeping float32."""
    return Split((split.images > 0.5).astype(np.float32), split.labels)


def _count_non_finite(array: np.ndarray) -> str:
    """Describes the NaN and infinite entries of an array that has some."""
    parts = []
    if (nans := int(np.isnan(array).sum())):
        parts.append(f"{nans} NaN value(s)")
    if (infs := int(np.isinf(array).sum())):
        parts.append(f"{infs} infinite value(s)")
    return " and ".join(parts)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The digits split: pixels 0..16 scaled to [0, 1], shape (N, 8, 8, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITS_SEED).permutation(len(digits.target))
    index = order[:DIGITS_TEST_SIZE] if split == "test" else order[DIGITS_TEST_SIZE:]
    images = (digits.images[index] / 16.0).astype(np.float32)[..., None]
    return images, digits.target[index].astype(np.int32)


def _load_tfds(name: str, split: str, data_dir: str | None,
               manual_dir: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Reads a TFDS split whole."""
    tfds, builder = _prepared_builder(name, data_dir, manual_dir)
    with _quiet(tfds):
        arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images = arrays["image"].astype(np.float32) / np.float32(
        _TFDS_SOURCES[name].divisor)
    labels = arrays.get("label")
    return images, None if labels is None else labels.astype(np.int32)


def split_shape(name: str, split: str, *, data_dir: str | None = None,
                manual_dir: str | None = None) -> tuple[int, ...]:
    """(N, H, W, C) of a split, without reading its images (TFDS's record of the set)."""
    _check_name(name)
    _check_split(name, split)
    if name == "digits":
        return load_split(name, split).images.shape
    _, builder = _prepared_builder(name, data_dir, manual_dir)
    return (builder.info.splits[split].num_examples, *builder.info.features["image"].shape)


def stored_batches(name: str, split: str, *, data_dir: str | None = None,
                   manual_dir: str | None = None, batch_size: int = 10_000):
    """(image shape, divisor, iterator of (uint8 levels (n, H, W, C), int32 labels or None)):
    a TFDS split read in batches, for writing it elsewhere with bounded memory."""
    _check_name(name)
    _check_split(name, split)
    if name == "digits":
        raise DataError("digits is held in memory; it has no stored batches")
    tfds, builder = _prepared_builder(name, data_dir, manual_dir)
    shape = tuple(builder.info.features["image"].shape)

    def read():
        with _quiet(tfds):
            for arrays in tfds.as_numpy(builder.as_dataset(split=split, batch_size=batch_size)):
                labels = arrays.get("label")
                yield arrays["image"], None if labels is None else labels.astype(np.int32)

    return shape, _TFDS_SOURCES[name].divisor, read()


def _prepared_builder(name: str, data_dir: str | None, manual_dir: str | None):
    """(tfds, the data set's builder), preparing the data set from the manual folder first if
    data_dir does not hold it yet."""
    _require_tfds(name)
    root = _data_dir(data_dir)
    # Checked before importing TensorFlow (several seconds) so that missing
    # data fails at once.
    folder = None if _looks_prepared(root, name) else _manual_folder(
        name, manual_dir, root)
    tfds = _import_tfds(name)
    with _quiet(tfds):
        builder = tfds.builder(name, data_dir=os.fspath(root))
        if not builder.is_prepared():
            _prepare(tfds, builder, name,
                     folder or _manual_folder(name, manual_dir, root))
    return tfds, builder


def _data_dir(data_dir: str | None) -> Path:
    """The TFDS cache: the argument, else $VAEJAX_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get("VAEJAX_DATA_DIR") or "~/tensorflow_datasets"
    return Path(chosen).expanduser()


def _looks_prepared(root: Path, name: str) -> bool:
    """Whether root holds a prepared version of the data set (any version)."""
    return any((root / name).glob("*/dataset_info.json"))


def _manual_folder(name: str, manual_dir: str | None, root: Path) -> Path:
    """The folder holding all of the data set's files.

    Looks in <manual_dir>/<name>, then in manual_dir itself; manual_dir
    defaults to $VAEJAX_MANUAL_DIR. Raises DataError saying how to provide
    the files when neither holds them all.
    """
    chosen = manual_dir or os.environ.get("VAEJAX_MANUAL_DIR")
    if not chosen:
        raise _missing_data(name, root, "no manual folder was given")
    parent = Path(chosen).expanduser()
    if not parent.is_dir():
        problem = "is not a folder" if parent.exists() else "does not exist"
        raise _missing_data(name, root, f"the manual folder {parent} {problem}")
    candidates = [parent / name, parent]
    for folder in candidates:
        if folder.is_dir() and not _missing_files(name, folder):
            return folder
    folder = candidates[0] if candidates[0].is_dir() else parent
    missing = ", ".join(_missing_files(name, folder))
    raise _missing_data(name, root, f"{folder} lacks {missing}")


def _missing_files(name: str, folder: Path) -> list[str]:
    """The data set's files that the folder lacks."""
    return [f for f in _TFDS_SOURCES[name].files if not (folder / f).is_file()]


def _missing_data(name: str, root: Path, reason: str) -> DataError:
    """The error for a data set that is neither prepared nor provided."""
    source = _TFDS_SOURCES[name]
    return DataError(
        f"{name} is not prepared in {root} and {reason}. vaejax does not "
        f"download data: pass --manual-dir DIR (manual_dir=DIR) or set "
        f"VAEJAX_MANUAL_DIR=DIR, where DIR holds {name}/ with the files "
        f"{', '.join(source.files)} (from {source.url}). TFDS then prepares "
        f"{name} once into {root} (data_dir, or VAEJAX_DATA_DIR).")


def _require_tfds(name: str) -> None:
    """Raises DataError unless tensorflow_datasets and tensorflow are installed."""
    for module in ("tensorflow_datasets", "tensorflow"):
        if importlib.util.find_spec(module) is None:
            raise _no_tfds(name)


def _no_tfds(name: str) -> DataError:
    """The error for a TFDS data set without TFDS installed."""
    return DataError(
        f"{name} needs tensorflow_datasets and tensorflow, which are not "
        f"installed: pip install \"vaejax[datasets]\" (digits needs neither)")


def _import_tfds(name: str):
    """Imports tensorflow_datasets, keeping TensorFlow off the GPU."""
    # TensorFlow's C++ start-up messages would bury the caller's own output; the
    # oneDNN notice is printed unless its (here irrelevant) kernels are off.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise _no_tfds(name) from err
    # TensorFlow only reads files here; the accelerator belongs to JAX.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow has already started: its devices are fixed.
    return tfds


@contextlib.contextmanager
def _quiet(tfds):
    """TFDS without its progress bars, printed notices and absl log lines below errors:
    they would bury the caller's own output."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    tfds.disable_progress_bar()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tfds.display_progress_bar(True)  # TFDS's default, for the caller's own use of it
        absl_logger.setLevel(level)


def _prepare(tfds, builder, name: str, folder: Path) -> None:
    """Prepares the data set in the builder's data_dir from the manual folder."""
    print(f"vaejax: preparing {name} from {folder} into {builder.data_dir} (once)",
          file=sys.stderr)
    config = tfds.download.DownloadConfig(
        manual_dir=os.fspath(folder), try_download_gcs=False)
    try:
        builder.download_and_prepare(download_config=config)
    except _checksum_error() as err:
        raise DataError(
            f"the files in {folder} are not the ones TFDS expects for {name} "
            f"(from {_TFDS_SOURCES[name].url}): {err}") from err


def _checksum_error() -> type[Exception] | tuple[()]:
    """TFDS's exception for a file with the wrong checksum, if it can be found."""
    try:
        from tensorflow_datasets.core.download.download_manager import (
            NonMatchingChecksumError)
    except ImportError:
        return ()
    return NonMatchingChecksumError
