"""Tests for vaejax.input_pipeline: digits, validation, offline TFDS loading.

The TFDS tests read the files in ../shared/data (beside the repository) and
never touch the network. They prepare each data set once per run in
$VAEJAX_DATA_DIR, or else in a temporary folder (about 10-25 s each).
"""

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from vaejax import input_pipeline as ip

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HAS_TFDS = all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow_datasets", "tensorflow"))

needs_tfds = pytest.mark.skipif(
    not HAS_TFDS, reason="tensorflow_datasets / tensorflow not installed")
needs_shared_data = pytest.mark.skipif(
    not HAS_TFDS or not (SHARED_DATA / "mnist").is_dir()
    or not (SHARED_DATA / "binarized_mnist").is_dir(),
    reason=f"needs tensorflow_datasets and the offline data in {SHARED_DATA}")

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture
def no_env(monkeypatch):
    """Clears the data-location environment variables."""
    monkeypatch.delenv("VAEJAX_MANUAL_DIR", raising=False)
    monkeypatch.delenv("VAEJAX_DATA_DIR", raising=False)


# Import hygiene.

def test_import_does_not_load_tensorflow():
    code = ("import sys, vaejax.input_pipeline; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow'; "
            "assert 'tensorflow_datasets' not in sys.modules, 'tfds'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# digits: scikit-learn's bundled 8x8 digits.

@pytest.fixture(scope="module")
def digits():
    return ip.load("digits")


def test_digits_shapes_and_types(digits):
    assert digits.name == "digits"
    assert digits.train.images.shape == (1497, 8, 8, 1)
    assert digits.test.images.shape == (300, 8, 8, 1)
    for split in (digits.train, digits.test):
        assert split.images.dtype == np.float32
        assert split.labels.dtype == np.int32
        assert split.labels.shape == (split.images.shape[0],)
    assert not digits.is_binary


def test_digits_values_scaled_from_sixteen_levels(digits):
    images = np.concatenate([digits.train.images, digits.test.images])
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.unique(images * 16), np.arange(17))


def test_digits_labels_cover_all_classes(digits):
    for split in (digits.train, digits.test):
        np.testing.assert_array_equal(np.unique(split.labels), np.arange(10))


def test_digits_split_is_a_partition_of_the_bundled_set(digits):
    from sklearn.datasets import load_digits

    bundled = load_digits()
    ours = np.concatenate([digits.train.images, digits.test.images]) * 16
    rows = np.concatenate([ours.reshape(len(ours), -1),
                           np.concatenate([digits.train.labels,
                                           digits.test.labels])[:, None]], axis=1)
    reference = np.concatenate([bundled.data, bundled.target[:, None]], axis=1)
    np.testing.assert_array_equal(_sorted_rows(rows), _sorted_rows(reference))


def _sorted_rows(array):
    """The rows of a 2-d array in lexicographic order."""
    return array[np.lexsort(array.T[::-1])]


def test_digits_split_is_deterministic(digits):
    again = ip.load_split("digits", "test")
    np.testing.assert_array_equal(again.images, digits.test.images)
    np.testing.assert_array_equal(again.labels, digits.test.labels)
    # Pins the seeded permutation, so a changed split shows up here.
    assert digits.test.labels[:12].tolist() == [6, 6, 6, 2, 5, 6, 6, 2, 2, 1, 1, 9]


def test_digits_static_binarization(digits):
    binary = ip.load("digits", binarization="static")
    assert binary.is_binary
    assert binary.train.images.dtype == np.float32
    np.testing.assert_array_equal(binary.train.images,
                                  (digits.train.images > 0.5).astype(np.float32))
    assert set(np.unique(binary.test.images)) == {0.0, 1.0}
    np.testing.assert_array_equal(binary.test.labels, digits.test.labels)


# Bad arguments.

def test_data_error_is_a_value_error():
    assert issubclass(ip.DataError, ValueError)


@pytest.mark.parametrize("call", [
    lambda: ip.load("imagenet"),
    lambda: ip.load_split("MNIST", "train"),
])
def test_unknown_data_set_lists_known_ones(call):
    with pytest.raises(ip.DataError) as info:
        call()
    for name in ip.KNOWN_DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("name, split, available", [
    ("digits", "validation", "train, test"),
    ("mnist", "validation", "train, test"),
    ("binarized_mnist", "valid", "train, validation, test"),
])
def test_unknown_split_lists_available_ones(name, split, available):
    with pytest.raises(ip.DataError, match=f"available: {available}"):
        ip.load_split(name, split)


@pytest.mark.parametrize("binarization", ["otsu", ""])
def test_unknown_binarization(binarization):
    with pytest.raises(ip.DataError, match="'none', 'static', 'dynamic', 'dequantize'"):
        ip.load("digits", binarization=binarization)


def test_dynamic_binarization_binarizes_the_test_split_once(digits):
    """Training images stay grey (drawn per batch); the test split is one fixed binary draw."""
    dynamic = ip.load("digits", binarization="dynamic")
    np.testing.assert_array_equal(dynamic.train.images, digits.train.images)
    assert set(np.unique(dynamic.test.images)) == {0.0, 1.0}
    np.testing.assert_array_equal(dynamic.test.images,
                                  ip.load("digits", binarization="dynamic").test.images)
    # Pixel means agree with the grey levels they were drawn from (5 standard errors).
    p, n = digits.test.images.mean(), digits.test.images.size
    assert abs(dynamic.test.images.mean() - p) < 5 * np.sqrt(p * (1 - p) / n)


def test_binarize_batch_draws_bernoulli_pixels_only_when_dynamic():
    x = np.full((4000,), 0.3, np.float32)
    key = jax.random.key(0)
    np.testing.assert_array_equal(ip.binarize_batch(key, x, "static"), x)
    draws = np.asarray(ip.binarize_batch(key, x, "dynamic"))
    assert set(np.unique(draws)) == {0.0, 1.0} and abs(draws.mean() - 0.3) < 5 * np.sqrt(0.21 / 4000)


def test_dequantize_draws_uniformly_within_each_level(digits):
    """y = (k + u)/L: inside [k/L, (k+1)/L), uniform there (mean (k + ½)/L, variance 1/12L²);
    the test split is one fixed draw, the training split stays on its levels."""
    levels = ip.LEVELS["digits"]
    k = np.round(digits.test.images * (levels - 1))
    np.testing.assert_array_equal(k, digits.test.images * 16)  # digits are on 17 levels
    dequantized = ip.load("digits", binarization="dequantize")
    np.testing.assert_array_equal(dequantized.train.images, digits.train.images)
    u = dequantized.test.images * levels - k
    assert u.min() >= 0 and u.max() < 1
    n = u.size
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / n) and abs(u.var() - 1 / 12) < 0.005
    np.testing.assert_array_equal(dequantized.test.images,
                                  ip.load("digits", binarization="dequantize").test.images)
    x = np.full((4000,), 3 / 16, np.float32)
    draws = np.asarray(ip.binarize_batch(jax.random.key(1), x, "dequantize", levels))
    assert np.all((draws >= 3 / 17) & (draws < 4 / 17))


@pytest.mark.parametrize("name", ip.KNOWN_DATASETS)
def test_every_data_set_has_its_grey_levels(name):
    assert ip.LEVELS[name] in (2, 17, 256)


# check_images.

def test_check_images_accepts_valid_images():
    ip.check_images(np.linspace(0, 1, 2 * 3 * 3).reshape(2, 3, 3, 1))
    ip.check_images(np.array([0, 1], np.uint8).reshape(2, 1, 1, 1))


def _images_with(value):
    images = np.full((2, 4, 4, 1), 0.5, np.float32)
    images[1, 2, 3, 0] = value
    return images


@pytest.mark.parametrize("images, message", [
    (_images_with(np.nan), "1 NaN value"),
    (_images_with(np.inf), "1 infinite value"),
    (_images_with(-np.inf), "1 infinite value"),
    (_images_with(1.5), r"must lie in \[0, 1\]"),
    (_images_with(-0.1), r"must lie in \[0, 1\]"),
    (np.full((2, 4, 4, 1), 255, np.uint8), "dividing by 255"),
    (np.zeros((2, 4, 4)), r"shape \(N, H, W, C\), got shape \(2, 4, 4\)"),
    (np.zeros((2, 4, 4, 1, 1)), r"shape \(N, H, W, C\)"),
    (np.zeros((0, 4, 4, 1)), "empty"),
    (np.full((1, 1, 1, 1), "a"), "real numbers"),
])
def test_check_images_rejects(images, message):
    with pytest.raises(ip.DataError, match=message):
        ip.check_images(images)


def test_check_images_names_the_array():
    with pytest.raises(ip.DataError, match="^mnist train images contains"):
        ip.check_images(_images_with(np.nan), "mnist train images")


# Missing data fails at once, with the fix in the message.

def _assert_fails_fast(match, **kwargs):
    start = time.perf_counter()
    with pytest.raises(ip.DataError, match=match) as info:
        ip.load_split("mnist", "train", **kwargs)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    for hint in ("--manual-dir", "VAEJAX_MANUAL_DIR", "mnist/", *MNIST_FILES):
        assert hint in message
    return message


@needs_tfds
def test_missing_manual_dir_fails_fast(tmp_path, no_env):
    _assert_fails_fast("does not exist", data_dir=tmp_path / "cache",
                       manual_dir=tmp_path / "absent")


@needs_tfds
def test_no_manual_dir_at_all_fails_fast(tmp_path, no_env):
    _assert_fails_fast("no manual folder was given", data_dir=tmp_path / "cache")


@needs_tfds
def test_manual_dir_from_environment_missing_files(tmp_path, no_env, monkeypatch):
    (tmp_path / "manual" / "mnist").mkdir(parents=True)
    for name in MNIST_FILES[:2]:
        (tmp_path / "manual" / "mnist" / name).touch()
    monkeypatch.setenv("VAEJAX_MANUAL_DIR", str(tmp_path / "manual"))
    monkeypatch.setenv("VAEJAX_DATA_DIR", str(tmp_path / "cache"))
    message = _assert_fails_fast("lacks t10k-images-idx3-ubyte.gz, t10k-labels")
    assert str(tmp_path / "cache") in message


@needs_tfds
def test_cifar10_names_its_archive(tmp_path, no_env):
    with pytest.raises(ip.DataError, match="cifar10/ with the files cifar-10-binary.tar.gz"):
        ip.load("cifar10", data_dir=tmp_path, manual_dir=tmp_path)


@pytest.mark.parametrize("module", ["tensorflow_datasets", "tensorflow"])
def test_missing_tfds_says_what_to_install(module, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ip.DataError, match=r'pip install "vaejax\[datasets\]"'):
        ip.load_split("fashion_mnist", "train", data_dir=tmp_path,
                      manual_dir=tmp_path)


@needs_tfds
@pytest.mark.parametrize("layout", ["parent", "own folder"])
def test_wrong_files_fail_the_checksum(layout, tmp_path, no_env):
    folder = tmp_path / "manual" / "binarized_mnist"
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (folder / f"binarized_mnist_{split}.amat").write_text("0 1\n")
    manual_dir = folder.parent if layout == "parent" else folder
    with pytest.raises(ip.DataError, match="not the ones TFDS expects"):
        ip.load_split("binarized_mnist", "test", data_dir=tmp_path / "cache",
                      manual_dir=manual_dir)


@needs_tfds
def test_preparing_prints_one_line(tmp_path, no_env, capfd, caplog, monkeypatch):
    """TFDS's progress bars, notices and log lines are silenced: one line says what happens."""
    tfds = ip._import_tfds("tiny_images")

    class TinyImages(tfds.core.GeneratorBasedBuilder):  # TFDS's machinery on 4 images
        VERSION = tfds.core.Version("1.0.0")
        pkg_dir_path = tfds.core.Path(tmp_path)  # where TFDS would look for its metadata

        def _info(self):
            image = tfds.features.Image(shape=(2, 2, 1))
            return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
                {"image": image}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(4):
                yield i, {"image": np.full((2, 2, 1), 255 * (i % 2), np.uint8)}

    monkeypatch.setitem(ip._TFDS_SOURCES, "tiny_images", ip._TfdsSource(("train",), (), "", 255.0))
    images, _ = ip._load_tfds("tiny_images", "train", tmp_path / "cache", tmp_path)
    assert images.shape == (4, 2, 2, 1)
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("vaejax: preparing tiny_images from"), (out, err)
    assert len(err.splitlines()) == 1 and not caplog.records, (err, caplog.records)


# TFDS data sets, prepared offline from ../shared/data.

def _xdist_root(tmp_path_factory):
    """The temporary folder shared by the pytest-xdist workers of this run, or
    None without xdist."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return None
    return tmp_path_factory.getbasetemp().parent


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """$VAEJAX_DATA_DIR, else a folder for this run (shared by xdist workers)."""
    if chosen := os.environ.get("VAEJAX_DATA_DIR"):
        return Path(chosen)
    if (shared := _xdist_root(tmp_path_factory)) is not None:
        (shared / "tensorflow_datasets").mkdir(exist_ok=True)
        return shared / "tensorflow_datasets"
    return tmp_path_factory.mktemp("tensorflow_datasets")


@pytest.fixture(scope="session")
def preparing(tmp_path_factory):
    """A lock per data set, so that xdist workers prepare it one at a time and
    the later ones read the cache."""
    shared = _xdist_root(tmp_path_factory)

    @contextlib.contextmanager
    def lock(name):
        if shared is None:
            yield
            return
        import fcntl

        with open(shared / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    return lock


@pytest.fixture(scope="session")
def binarized_mnist(tfds_data_dir, preparing):
    """The data set from the parent folder, its validation split, and the test
    split read again from the cache alone."""
    with preparing("binarized_mnist"):
        dataset = ip.load("binarized_mnist", data_dir=tfds_data_dir,
                          manual_dir=SHARED_DATA)
    validation = ip.load_split("binarized_mnist", "validation",
                               data_dir=tfds_data_dir, manual_dir=SHARED_DATA)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("VAEJAX_MANUAL_DIR", raising=False)
        cached_test = ip.load_split("binarized_mnist", "test",
                                    data_dir=tfds_data_dir)
    return dataset, validation, cached_test


@pytest.fixture(scope="session")
def mnist(tfds_data_dir, preparing):
    """The data set from its own folder, and statically binarized from the cache."""
    with preparing("mnist"):
        dataset = ip.load("mnist", data_dir=tfds_data_dir,
                          manual_dir=SHARED_DATA / "mnist")
    binary = ip.load("mnist", binarization="static", data_dir=tfds_data_dir)
    return dataset, binary


@needs_shared_data
def test_binarized_mnist_shapes(binarized_mnist):
    dataset, validation, _ = binarized_mnist
    assert dataset.name == "binarized_mnist" and dataset.is_binary
    assert dataset.train.images.shape == (50000, 28, 28, 1)
    assert dataset.test.images.shape == (10000, 28, 28, 1)
    assert validation.images.shape == (10000, 28, 28, 1)
    assert dataset.train.images.dtype == np.float32
    assert dataset.train.labels is None and dataset.test.labels is None


@needs_shared_data
def test_binarized_mnist_values_are_zero_or_one(binarized_mnist):
    dataset, validation, _ = binarized_mnist
    for images in (dataset.train.images, dataset.test.images, validation.images):
        np.testing.assert_array_equal(np.unique(images), [0.0, 1.0])


@needs_shared_data
def test_binarized_mnist_fraction_of_ones(binarized_mnist):
    dataset, validation, _ = binarized_mnist
    assert dataset.train.images.mean() == pytest.approx(0.1306, abs=5e-4)
    assert validation.images.mean() == pytest.approx(0.1311, abs=5e-4)
    assert dataset.test.images.mean() == pytest.approx(0.1325, abs=5e-4)


@needs_shared_data
def test_prepared_data_needs_no_manual_dir(binarized_mnist):
    dataset, _, cached_test = binarized_mnist
    np.testing.assert_array_equal(cached_test.images, dataset.test.images)


@needs_shared_data
def test_mnist_shapes_and_labels(mnist):
    dataset, _ = mnist
    assert dataset.name == "mnist" and not dataset.is_binary
    assert dataset.train.images.shape == (60000, 28, 28, 1)
    assert dataset.test.images.shape == (10000, 28, 28, 1)
    for split in (dataset.train, dataset.test):
        assert split.images.dtype == np.float32
        assert split.labels.dtype == np.int32
        np.testing.assert_array_equal(np.unique(split.labels), np.arange(10))


@needs_shared_data
def test_mnist_pixels_scaled_to_unit_interval(mnist):
    dataset, _ = mnist
    images = dataset.train.images
    assert images.min() == 0.0 and images.max() == 1.0
    assert len(np.unique(images)) > 2
    assert images.mean(dtype=np.float64) == pytest.approx(0.13066, abs=2e-5)


@needs_shared_data
def test_mnist_static_binarization(mnist):
    dataset, binary = mnist
    assert binary.is_binary
    for grey, split in ((dataset.train, binary.train), (dataset.test, binary.test)):
        assert split.images.dtype == np.float32
        np.testing.assert_array_equal(np.unique(split.images), [0.0, 1.0])
        np.testing.assert_array_equal(split.images, grey.images > 0.5)
        np.testing.assert_array_equal(split.labels, grey.labels)


@needs_shared_data
def test_mnist_streamed_from_array_record_equals_loaded(mnist, tfds_data_dir, preparing):
    dataset, binary = mnist
    from vaejax import streaming

    with preparing("mnist-array_record"):
        grey = streaming.prepared("mnist", data_dir=tfds_data_dir)
    again = streaming.prepared("mnist", threshold=True, data_dir=tfds_data_dir)  # written once
    assert grey.shape == dataset.train.images.shape and grey.divisor == 255.0
    rows = np.random.default_rng(0).permutation(60000).reshape(2, 300, 100)  # every example
    for stream, split in ((grey, dataset.train), (again, binary.train)):
        read = stream.read(rows)
        np.testing.assert_array_equal(read.x, split.images[rows])
        np.testing.assert_array_equal(read.y, split.labels[rows])
    np.testing.assert_array_equal(grey.labels, dataset.train.labels)
