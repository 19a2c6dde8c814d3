"""Properties of the data stage: file layout, determinism, class balance, exact pixels, errors."""

from __future__ import annotations

import json
import tarfile
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline_scripts.earlyphase import data, data_sources, rng

SMALL = {"n_train": 200, "n_test": 50}  # keeps synthetic files tiny


def _read(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("train/images", "train/labels", "test/images", "test/labels")}


def _synthetic(tmp_path: Path, name: str = "syn.h5", **kwargs) -> tuple[Path, dict]:
    kwargs.setdefault("synthetic", SMALL)
    out = tmp_path / name
    return out, data.prepare(out, "synthetic", **kwargs)


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """train/ and test/ with 3 classes (created out of sorted order) of random 32x32 PNGs.

    Also holds what ImageFolder skips (text files, files outside class folders) and what it
    includes (a nested folder inside a class, named 0sub so that ImageFolder's walk order differs
    from sorting full paths), so the archive reader is checked against it.
    """
    root = tmp_path / "tree"
    g = rng.generator(0, "test-images")
    pixels = {}
    for split, count in (("train", 4), ("test", 2)):
        for cls in ("cat", "ant", "bee"):
            for i in reversed(range(count)):
                rel = f"{split}/{cls}/{i}.png"
                pixels[rel] = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8)
    pixels["train/cat/0sub/x.png"] = torch.zeros(32, 32, 3, dtype=torch.uint8)
    for rel, img in pixels.items():
        _png(root / rel, img.numpy())
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "train" / "cat" / "readme.txt").write_text("not an image")
    return root, {rel: img.numpy() for rel, img in pixels.items()}


def _targz(tree_dir: Path, out: Path, arcname: str) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(tree_dir, arcname=arcname)
    return out


def _no_leftovers(directory: Path, allowed: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} == allowed


# --- synthetic --------------------------------------------------------------------------------


def test_synthetic_layout_and_balance(tmp_path):
    out, prov = _synthetic(tmp_path, synthetic={"n_train": 203, "n_test": 50, "num_classes": 7})
    arrays = _read(out)
    for split, n in (("train", 203), ("test", 50)):
        images, labels = arrays[f"{split}/images"], arrays[f"{split}/labels"]
        assert images.dtype == np.uint8 and images.shape == (n, 32, 32, 3)
        assert labels.dtype == np.int64 and labels.shape == (n,)
        counts = np.bincount(labels, minlength=7)
        assert len(counts) == 7 and counts.max() - counts.min() <= 1
    assert prov["n_train"] == 203 and prov["n_test"] == 50 and prov["source"] == "synthetic"
    assert prov["format_version"] == 1 and prov["subset_seed"] == -1
    assert len(data.load(out).classes) == 7


def test_synthetic_is_deterministic_per_seed(tmp_path):
    a, prov_a = _synthetic(tmp_path, "a.h5", seed=3)
    b, prov_b = _synthetic(tmp_path, "b.h5", seed=3)
    c, prov_c = _synthetic(tmp_path, "c.h5", seed=4)
    for key, value in _read(a).items():
        np.testing.assert_array_equal(value, _read(b)[key])
    assert prov_a["sha256_train_images"] == prov_b["sha256_train_images"]
    assert prov_a["sha256_train_images"] != prov_c["sha256_train_images"]
    assert not np.array_equal(_read(a)["test/images"], _read(c)["test/images"])


def test_synthetic_is_learnable_but_not_by_mean_colour(tmp_path):
    """Nearest class centroid: at chance on mean colour, far above it on shift-invariant features."""
    out, _ = _synthetic(tmp_path, synthetic={"n_train": 1000, "n_test": 500})
    d = data.load(out)
    x_tr, x_te = d.train_x.double(), d.test_x.double()

    def accuracy(features) -> float:
        f_tr, f_te = features(x_tr), features(x_te)
        centroids = torch.stack([f_tr[d.train_y == c].mean(0) for c in range(10)])
        return (torch.cdist(f_te, centroids).argmin(1) == d.test_y).double().mean().item()

    def spectrum(x):  # |FFT| of the lowest modes ignores the random shifts
        return torch.fft.fft2(x).abs()[:, :, :4, :4].flatten(1)

    assert accuracy(lambda x: x.mean((2, 3))) < 0.2  # chance is 0.1
    assert accuracy(spectrum) > 0.6


# --- imagefolder ------------------------------------------------------------------------------


def test_imagefolder_directory_round_trips_pixels(tmp_path, tree):
    root, pixels = tree
    out = tmp_path / "f.h5"
    prov = data.prepare(out, "imagefolder", path=str(root))
    d = data.load(out)
    assert d.classes == ("ant", "bee", "cat")
    assert prov["source_path"] == str(root) and prov["n_train"] == 13 and prov["n_test"] == 6
    for split, x, y in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
        reference = torchvision.datasets.ImageFolder(str(root / split))
        assert len(reference.samples) == len(y)
        for i, (file, label) in enumerate(reference.samples):
            rel = Path(file).relative_to(root).as_posix()
            assert y[i].item() == label and rel.split("/")[1] == d.classes[label]
            np.testing.assert_array_equal(x[i].permute(1, 2, 0).numpy(), pixels[rel])


@pytest.mark.parametrize("arcname", [".", "cifar"])  # tree at the top, or in one folder
def test_imagefolder_archive_equals_directory(tmp_path, tree, arcname):
    root, _ = tree
    archive = _targz(root, tmp_path / "tree.tar.gz", arcname)
    data.prepare(tmp_path / "dir.h5", "imagefolder", path=str(root))
    prov = data.prepare(tmp_path / "tar.h5", "imagefolder", path=str(archive))
    for key, value in _read(tmp_path / "dir.h5").items():
        np.testing.assert_array_equal(value, _read(tmp_path / "tar.h5")[key])
    assert data.load(tmp_path / "tar.h5").classes == ("ant", "bee", "cat")
    assert prov["source_path"] == str(archive) and len(prov["source_sha256"]) == 64


def test_imagefolder_process_pool_gives_same_result(tmp_path, tree, monkeypatch):
    root, _ = tree
    data.prepare(tmp_path / "seq.h5", "imagefolder", path=str(root))
    monkeypatch.setattr(data_sources, "_PARALLEL_MIN_FILES", 0)
    monkeypatch.setattr(data_sources, "_FILES_PER_TASK", 5)
    data.prepare(tmp_path / "pool.h5", "imagefolder", path=str(root))
    for key, value in _read(tmp_path / "seq.h5").items():
        np.testing.assert_array_equal(value, _read(tmp_path / "pool.h5")[key])


# --- subsets ----------------------------------------------------------------------------------


def test_subset_is_balanced_deterministic_and_drawn_from_the_source(tmp_path):
    full, _ = _synthetic(tmp_path, "full.h5")
    a, prov = _synthetic(tmp_path, "a.h5", n_train=23, n_test=10, seed=0)
    b, _ = _synthetic(tmp_path, "b.h5", n_train=23, n_test=10, seed=0)
    c, _ = _synthetic(tmp_path, "c.h5", n_train=23, n_test=10, seed=1)
    assert prov["n_train"] == 23 and prov["n_test"] == 10 and prov["n_train_source"] == 200
    assert prov["subset_seed"] == 0
    source, sub = _read(full), _read(a)
    counts = np.bincount(sub["train/labels"], minlength=10)
    assert counts.sum() == 23 and counts.max() - counts.min() <= 1
    assert (np.bincount(sub["test/labels"], minlength=10) == 1).all()
    rows = {img.tobytes(): i for i, img in enumerate(source["train/images"])}
    picked = [rows[img.tobytes()] for img in sub["train/images"]]
    assert picked == sorted(picked)  # kept in source order
    np.testing.assert_array_equal(source["train/labels"][picked], sub["train/labels"])
    np.testing.assert_array_equal(_read(b)["train/images"], sub["train/images"])
    assert not np.array_equal(_read(c)["train/images"], sub["train/images"])


def test_subset_larger_than_source_is_an_error(tmp_path):
    with pytest.raises(data.DataError, match="only 200"):
        _synthetic(tmp_path, n_train=201)


# --- load -------------------------------------------------------------------------------------


def test_load_gives_contiguous_nchw_tensors(tmp_path):
    out, prov = _synthetic(tmp_path)
    d = data.load(out)
    stored = _read(out)
    for split, x, y in (("train", d.train_x, d.train_y), ("test", d.test_x, d.test_y)):
        assert x.dtype == torch.uint8 and x.is_contiguous() and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), stored[f"{split}/images"].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(y.numpy(), stored[f"{split}/labels"])
    assert d.provenance == prov and d.num_classes == 10


# --- errors -----------------------------------------------------------------------------------


def test_missing_imagefolder_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError, match="train/<class>") as err:
        data.prepare(tmp_path / "f.h5", "imagefolder", path=str(missing))
    assert str(missing) in str(err.value)


def test_wrong_image_size_names_the_file_and_leaves_nothing_behind(tmp_path, tree):
    root, _ = tree
    _png(root / "test" / "bee" / "big.png", np.zeros((33, 32, 3), np.uint8))
    out = tmp_path / "out" / "f.h5"
    out.parent.mkdir()
    with pytest.raises(data.DataError, match=r"test/bee/big\.png is 32x33 pixels"):
        data.prepare(out, "imagefolder", path=str(root))
    _no_leftovers(out.parent, set())


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    def crash(path, *args):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(data, "_write", crash)
    with pytest.raises(OSError, match="disk full"):
        _synthetic(tmp_path)
    _no_leftovers(tmp_path, set())


def test_class_lists_must_match(tmp_path, tree):
    root, _ = tree
    _png(root / "test" / "dog" / "0.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(data.DataError, match="different class folders"):
        data.prepare(tmp_path / "f.h5", "imagefolder", path=str(root))


def test_garbage_archive(tmp_path):
    garbage = tmp_path / "data.tar.gz"
    garbage.write_bytes(b"\x1f\x8b this is not a gzip stream" * 100)
    with pytest.raises(data.DataError, match="tar archive"):
        data.prepare(tmp_path / "f.h5", "imagefolder", path=str(garbage))
    _no_leftovers(tmp_path, {"data.tar.gz"})


@pytest.fixture
def offline(monkeypatch):
    """Make torchvision's download fail at once, as on a machine without internet."""

    def refuse(url, *args, **kwargs):
        raise urllib.error.URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)


@pytest.mark.parametrize("content", [None, b"corrupt archive"])
def test_torchvision_without_data_explains_both_ways(tmp_path, offline, content):
    root = tmp_path / "cifar"
    if content is not None:
        root.mkdir()
        (root / "cifar-10-python.tar.gz").write_bytes(content)
    with pytest.raises(data.DataError) as err:
        data.prepare(tmp_path / "f.h5", "torchvision", root=str(root))
    message = str(err.value)
    assert str(root) in message and "cifar-10-python.tar.gz" in message
    assert "imagefolder" in message and "data.path" in message
    assert not (tmp_path / "f.h5").exists()


def test_torchvision_source_wiring(tmp_path, monkeypatch):
    """Stub CIFAR10 (the real one needs the 160 MB archive) to check what is stored."""

    class FakeCIFAR10:
        url, tgz_md5 = "https://example.invalid/cifar-10-python.tar.gz", "0" * 32

        def __init__(self, root, train, download):
            n = 20 if train else 10
            self.data = np.full((n, 32, 32, 3), 7 if train else 9, np.uint8)
            self.targets = [i % 10 for i in range(n)]
            self.classes = list(data.CIFAR10_CLASSES)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    prov = data.prepare(tmp_path / "f.h5", "torchvision", root=str(tmp_path))
    d = data.load(tmp_path / "f.h5")
    assert d.classes == data.CIFAR10_CLASSES and d.train_x.shape == (20, 3, 32, 32)
    assert (d.test_x == 9).all() and prov["source_url"] == FakeCIFAR10.url
    assert prov["source_path"] == str(tmp_path)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: f.__delitem__("test/labels"), "/test/labels is missing"),
        (lambda f: f.__delitem__("train"), "/train/images is missing"),
        (lambda f: _replace(f, "train/images", np.zeros((200, 3, 32, 32), np.uint8)), "N, 32, 32"),
        (lambda f: _replace(f, "train/labels", np.zeros(200, np.int32)), "expected int64"),
        (lambda f: f.attrs.__delitem__("classes"), "'classes' is missing"),
    ],
)
def test_load_rejects_damaged_files(tmp_path, damage, expected):
    out, _ = _synthetic(tmp_path)
    with h5py.File(out, "a") as f:
        damage(f)
    with pytest.raises(data.DataError, match=expected) as err:
        data.load(out)
    assert str(out) in str(err.value) and "re-run" in str(err.value)


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def test_load_rejects_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load(tmp_path / "absent.h5")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(data.DataError, match="not a readable HDF5 file"):
        data.load(tmp_path / "junk.h5")


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="imagefolder"):
        data.prepare(tmp_path / "f.h5", "mnist")
    with pytest.raises(ValueError, match="num_classes"):
        data.prepare(tmp_path / "f.h5", "synthetic", synthetic={"classes": 3})


def test_outputs_are_written_whole_with_the_umask_mode(tmp_path):
    """atomic_path: nothing at the target until the block succeeds, nothing left when it fails,
    and the mode a plain open() gives (group members can read results), not mkstemp's 0600."""
    import os

    from pipeline_scripts.earlyphase.atomic import atomic_path

    target = tmp_path / "out" / "x.h5"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("job died")
    assert list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
        assert not target.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "whole"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


# --- content hash: every job verifies the arrays it loads ---------------------------------------


def test_content_hash_is_stored_and_recomputed_on_load(tmp_path):
    out, prov = _synthetic(tmp_path)
    assert prov["sha256_content"] == data.content_hashes(_read(out))["sha256_content"]
    assert data.load(out).provenance["sha256_content"] == prov["sha256_content"]


@pytest.mark.parametrize("array", ["train/images", "train/labels", "test/images", "test/labels"])
def test_changed_arrays_are_refused_naming_the_file_and_what_to_do(tmp_path, array):
    """The issue's reproduction: half of /train/images zeroed in place, attributes and mtime
    kept (and the same for every other array): load refuses it instead of training on it."""
    import os

    out, _ = _synthetic(tmp_path)
    stat = out.stat()
    with h5py.File(out, "a") as f:
        values = f[array][()]
        if values.ndim > 1:
            values[: len(values) // 2] = 0
        else:
            values[: len(values) // 2] = (values[: len(values) // 2] + 1) % 10
        f[array][...] = values
    os.utime(out, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(data.DataError, match="do not match the content hash") as err:
        data.load(out)
    message = str(err.value)
    assert str(out) in message and f"/{array}" in message and "prepare_data" in message


def test_file_without_content_hash_is_refused_with_advice(tmp_path):
    out, _ = _synthetic(tmp_path)
    with h5py.File(out, "a") as f:
        del f.attrs["sha256_content"]  # as made before the hash existed
    with pytest.raises(data.DataError, match="no content hash") as err:
        data.load(out)
    assert str(out) in str(err.value) and "re-run prepare_data" in str(err.value)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write leaves `.x.h5.<random>.tmp`; the next successful write of x.h5 removes it
    (and nothing of other outputs beside it)."""
    from pipeline_scripts.earlyphase.atomic import atomic_path

    (tmp_path / ".x.h5.abc123.tmp").write_text("half, writer killed")
    (tmp_path / ".y.h5.abc123.tmp").write_text("another output's writer")
    with atomic_path(tmp_path / "x.h5") as tmp:
        tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.h5.abc123.tmp", "x.h5"]


def test_the_run_directory_keeps_its_data(tmp_path, tree, monkeypatch):
    """config_check.data_of_the_run: once results/data/cifar10.h5 exists, its recorded source
    replaces the config's (a later command names no data), and a command naming other data on
    its --config is refused naming data.source."""
    from pipeline_scripts.earlyphase import config_check

    root, _ = tree
    monkeypatch.chdir(tmp_path)
    data_file = "results/data/cifar10.h5"

    def config(**data):
        return {"data": {"source": "torchvision", "path": None, **data}}

    before = config(source="imagefolder", path="tree")
    assert config_check.data_of_the_run(before, data_file, None) is None  # nothing prepared yet
    assert before["data"]["path"] == str(tmp_path / "tree")  # spelled as prepare_data records it
    Path(data_file).parent.mkdir(parents=True)
    data.prepare(data_file, "imagefolder", path=str(root))
    later = config()  # the preset's default source, no data on the command line
    note = config_check.data_of_the_run(later, data_file, None)
    assert later["data"]["source"] == "imagefolder" and later["data"]["path"] == str(root)
    assert "was made with imagefolder" in note and "the config says torchvision" in note
    same = config(source="imagefolder", path=str(root))
    assert config_check.data_of_the_run(same, data_file, {"source": "imagefolder"}) is None
    other = config()
    with pytest.raises(
        config_check.ConfigError, match="data.source.*was made with data imagefolder"
    ):
        config_check.data_of_the_run(other, data_file, {"source": "torchvision"})
    moved = config(source="imagefolder", path=str(tmp_path / "elsewhere"))
    with pytest.raises(config_check.ConfigError, match="asks for imagefolder from .*elsewhere"):
        config_check.data_of_the_run(moved, data_file, {"path": "elsewhere"})


@pytest.mark.parametrize("arcname", [None, ".", "cifar"])  # the directory, or a tar of it
def test_the_planning_counts_an_image_folder_as_prepare_data_reads_it(tmp_path, tree, arcname):
    """folder_count (torch-free, for the planning's data.n_train check) finds the images the
    loader reads: ImageFolder's extensions, nested folders inside a class, nothing outside."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from pipeline_scripts.earlyphase import folder_count

    assert folder_count.IMG_EXTENSIONS == IMG_EXTENSIONS
    root, _ = tree
    path = root if arcname is None else _targz(root, tmp_path / "tree.tar.gz", arcname)
    prov = data.prepare(tmp_path / "d.h5", "imagefolder", path=str(path))
    assert folder_count.count(path) == {"train": prov["n_train"], "test": prov["n_test"]}
    assert folder_count.count(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert folder_count.count(tmp_path / "empty") is None  # not the layout: prepare_data says so


def test_n_train_beyond_an_image_folder_fails_the_planning(tmp_path, tree, monkeypatch):
    """config_check: data.n_train / n_test larger than the image folder holds name the key; the
    count is cached per (path, size, mtime); a prepared run directory reads what prepare_data
    recorded (and no longer needs the source)."""
    from pipeline_scripts.earlyphase import config_check

    root, _ = tree  # 13 training and 6 test images
    monkeypatch.chdir(tmp_path)
    config = {"data": {"source": "imagefolder", "path": str(root), "n_train": 14}}
    cache = tmp_path / ".snakemake"
    with pytest.raises(config_check.ConfigError, match="data.n_train: 14 train .* holds 13"):
        config_check._data_and_dense({**config, "networks": []}, cache)
    (stamp,) = (cache / "earlyphase-config-check").iterdir()
    assert json.loads(stamp.read_text()) == {"train": 13, "test": 6}
    stamp.write_text(json.dumps({"train": 20, "test": 6}))  # the cache is what is read
    assert config_check.source_size(config, cache_dir=cache)["train"] == 20
    Path("results/data").mkdir(parents=True)
    data.prepare("results/data/cifar10.h5", "imagefolder", path=str(root))
    assert config_check.source_size(config, cache_dir=None) == {"train": 13, "test": 6}
    moved = {"source": "imagefolder", "path": str(root)}
    root.rename(tmp_path / "elsewhere")  # prepared: the missing source is no mistake
    config_check._image_folder_exists(moved)
    with pytest.raises(config_check.ConfigError, match="data.path: .* does not exist"):
        config_check._image_folder_exists({"source": "imagefolder", "path": str(tmp_path / "x")})


def test_the_planning_cache_is_the_users_and_falls_back_to_the_run_directory(tmp_path, monkeypatch):
    """config_check.cache_dir: $EARLYPHASE_CACHE_DIR, else $XDG_CACHE_HOME/earlyphase-pipeline,
    else the run directory's .snakemake where neither can be written."""
    from pipeline_scripts.earlyphase import config_check

    monkeypatch.setenv("EARLYPHASE_CACHE_DIR", str(tmp_path / "mine"))
    assert config_check.cache_dir() == tmp_path / "mine" and (tmp_path / "mine").is_dir()
    monkeypatch.delenv("EARLYPHASE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config_check.cache_dir() == tmp_path / "xdg" / "earlyphase-pipeline"
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("EARLYPHASE_CACHE_DIR", str(tmp_path / "file" / "cache"))
    assert config_check.cache_dir() == Path(".snakemake")
