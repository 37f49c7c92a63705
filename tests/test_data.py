"""acc.data: readers, preprocessing, augmentation, validation split and bad-data errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acc.data import Preprocess, load_dataset, resolve_preprocess
from acc.data.cifar_pack import read_pack, write_pack
from acc.data.splits import open_splits, reuse_decoded
from acc.errors import InputError

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"
DEMO = Path(__file__).resolve().parents[1] / "models" / "data"


def random_images(count, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def png_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")  # lossless, so decoded pixels can be compared
    return buffer.getvalue()


def test_pack_round_trip_keeps_bytes_pixels_and_labels(tmp_path):
    images = random_images(6)
    blobs = [png_bytes(image) for image in images]
    write_pack(tmp_path / "small.npz", blobs, [0, 1, 2, 0, 1, 2], ["a", "b", "c"])
    with np.load(tmp_path / "small.npz") as archive:
        assert archive["jpeg"].tobytes() == b"".join(blobs)
    data = load_dataset(tmp_path / "small.npz")
    np.testing.assert_array_equal(data.inputs, images)
    assert data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert data.classes == ("a", "b", "c")


def test_pack_split_folder_limit_is_seeded_sample(tmp_path):
    write_pack(tmp_path / "train.jpeg.npz", [png_bytes(i) for i in random_images(10)], list(range(10)), [str(c) for c in range(10)])
    first = load_dataset(tmp_path, limit=4, seed=3)
    again = load_dataset(tmp_path, limit=4, seed=3)
    assert len(first) == 4
    np.testing.assert_array_equal(first.labels, again.labels)
    assert first.labels.tolist() != [0, 1, 2, 3] or load_dataset(tmp_path, limit=4, seed=4).labels.tolist() != [0, 1, 2, 3]


def test_pack_sha256_mismatch_is_an_input_error(tmp_path):
    write_pack(tmp_path / "train.jpeg.npz", [png_bytes(i) for i in random_images(2)], [0, 1], ["a", "b"])
    (tmp_path / "SHA256SUMS").write_text("0" * 64 + "  train.jpeg.npz\n")
    with pytest.raises(InputError, match="SHA256 mismatch"):
        load_dataset(tmp_path, check_sha256=True)


def make_folder_tree(root, sizes=None):
    images = random_images(5)
    for index, image in enumerate(images):
        folder = root / ("cat" if index % 2 else "ant")
        folder.mkdir(parents=True, exist_ok=True)
        if sizes:
            image = np.asarray(Image.fromarray(image).resize(sizes[index]))
        Image.fromarray(image).save(folder / f"{index}.png")
    return images


def test_image_folder_sorted_classes_and_labels(tmp_path):
    make_folder_tree(tmp_path)
    data = load_dataset(tmp_path)
    assert data.classes == ("ant", "cat")
    assert data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.inputs.shape == (5, 8, 8, 3)


def test_image_folder_split_subfolder_and_resize(tmp_path):
    make_folder_tree(tmp_path / "val", sizes=[(8, 8), (10, 6), (8, 8), (12, 12), (8, 8)])
    with pytest.raises(InputError, match="differ in size"):
        load_dataset(tmp_path, split="val")
    assert load_dataset(tmp_path, split="val", size=(4, 6)).inputs.shape == (5, 4, 6, 3)


def test_arrays_float_nchw_with_labels_and_uint8_without(tmp_path):
    inputs = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    np.savez(tmp_path / "set.npz", inputs=inputs, labels=np.array([0, 1, 1, 0]))
    data = load_dataset(tmp_path / "set.npz", num_classes=2)
    assert not data.is_raw_images and data.labels.tolist() == [0, 1, 1, 0]
    np.save(tmp_path / "raw.npy", random_images(3))
    raw = load_dataset(tmp_path / "raw.npy")
    assert raw.is_raw_images and raw.labels is None


def written(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no class folders"),
        (lambda p: (p / "c" / "a").mkdir(parents=True) or p / "c", "no images"),
        (lambda p: np.save(p / "flat.npy", np.zeros((4, 10), np.float32)) or p / "flat.npy", "4-D"),
        (lambda p: np.savez(p / "l.npz", inputs=np.zeros((2, 3, 4, 4), np.float32), labels=[0, 5]) or p / "l.npz", "out of range"),
        (lambda p: np.savez(p / "n.npz", inputs=np.zeros((2, 3, 4, 4), np.float32), labels=[0, -1]) or p / "n.npz", "negative"),
        (lambda p: np.savez(p / "c.npz", inputs=np.zeros((2, 3, 4, 4), np.float32), labels=[0]) or p / "c.npz", "labels"),
        (lambda p: written(p / "bad.npz", b"PK\x03\x04 truncated"), "unreadable npz"),
        (lambda p: written(p / "notes.txt", b"x"), "not a dataset"),
    ],
)
def test_bad_data_is_a_one_line_input_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message) as caught:
        load_dataset(make(tmp_path), num_classes=3)
    assert "\n" not in str(caught.value)


def test_corrupt_image_in_folder_is_an_input_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="unreadable image"):
        load_dataset(tmp_path)


def test_preprocess_from_json_beside_model_and_options_override(tmp_path):
    model = tmp_path / "net.onnx"
    (tmp_path / "net.preprocess.json").write_text(json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3, "size": [8, 8], "layout": "NCHW", "classes": ["a"]}))
    preprocess = resolve_preprocess(model)
    assert preprocess.mean == (0.5, 0.5, 0.5) and preprocess.size == (8, 8)
    assert resolve_preprocess(model, std=(0.5, 0.5, 0.5), layout="NHWC").std == (0.5, 0.5, 0.5)
    assert resolve_preprocess(tmp_path / "other.onnx") == Preprocess()
    assert Preprocess(mean=(127.5,) * 3, std=(255.0,) * 3).mean == (0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="layout"):
        Preprocess(layout="CHW")


def _splits(path, pre, shape=(1, 3, 8, 8), **options):
    return open_splits(path, pre, shape, **options)[:3]


@pytest.mark.parametrize("cache_mb", [0, 1024])  # streamed, in memory
def test_splits_normalise_and_lay_out(tmp_path, cache_mb):
    np.savez(tmp_path / "white.npz", inputs=np.full((20, 8, 8, 3), 255, np.uint8), labels=np.arange(20) % 2)
    pre = Preprocess(mean=(0.5,) * 3, std=(0.25,) * 3, augment="none")
    train, _, _ = _splits(tmp_path / "white.npz", pre, cache_mb=cache_mb, workers=0)
    x, y = next(train.batches(4))
    assert x.shape == (4, 3, 8, 8) and torch.allclose(x, torch.full_like(x, 2.0)) and y.dtype == torch.int64
    nhwc, _, _ = _splits(tmp_path / "white.npz", Preprocess(layout="NHWC", augment="none"), (1, 8, 8, 3),
                         cache_mb=cache_mb, workers=0)
    assert next(nhwc.batches(4))[0].shape == (4, 8, 8, 3)


def test_validation_split_is_seeded_and_disjoint(tmp_path):
    images = random_images(50)
    np.savez(tmp_path / "set.npz", inputs=images, labels=np.arange(50) % 10)
    pre = Preprocess(augment="none")

    def pixels(data):
        return {row.tobytes() for row in next(data.batches(len(data)))[0].numpy().reshape(len(data), -1)}

    train, validation, _ = _splits(tmp_path / "set.npz", pre, seed=1, validation_fraction=0.2)
    again, validation_again, _ = _splits(tmp_path / "set.npz", pre, seed=1, validation_fraction=0.2, cache_mb=0, workers=0)
    assert len(train) == 40 and len(validation) == 10
    assert pixels(validation) == pixels(validation_again) and pixels(train) == pixels(again)
    assert not pixels(train) & pixels(validation)
    _, other, _ = _splits(tmp_path / "set.npz", pre, seed=2, validation_fraction=0.2)
    assert pixels(other) != pixels(validation)


def test_a_compile_run_decodes_the_same_images_once(tmp_path, monkeypatch):
    from acc.data.stream import StreamData

    images = random_images(40)
    np.savez(tmp_path / "set.npz", inputs=images, labels=np.arange(40) % 10)
    pre = Preprocess(augment="none")
    decodes = []
    decode = StreamData.in_memory
    monkeypatch.setattr(StreamData, "in_memory", lambda self: decodes.append(len(self)) or decode(self))

    def train(**options):
        return open_splits(tmp_path / "set.npz", pre, (1, 3, 8, 8), **options)[0]

    with reuse_decoded():
        first, again = train(seed=1, limit=30), train(seed=1, limit=30)
        assert decodes == [30]
        with reuse_decoded():  # a nested block shares the outer one's images
            train(seed=1, limit=30)
        assert decodes == [30]
        train(seed=2, limit=30)  # another sample is decoded
        assert decodes == [30, 30]
    after = train(seed=1, limit=30)  # outside the block every call decodes
    assert decodes == [30, 30, 30]
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.inputs, after.inputs)


def test_demo_sample_is_balanced():
    train = load_dataset(DEMO / "cifar10_demo", split="train")
    test = load_dataset(DEMO / "cifar10_demo", split="test")
    assert np.bincount(train.labels).tolist() == [1000] * 10 and np.bincount(test.labels).tolist() == [200] * 10


@pytest.mark.skipif(not (CIFAR / "train.jpeg.npz").is_file(), reason="shared CIFAR-10 pack absent")
def test_reads_first_images_of_shared_cifar10():
    data = read_pack(CIFAR / "test.jpeg.npz", indices=range(5))
    assert data.inputs.shape == (5, 32, 32, 3) and data.inputs.dtype == np.uint8
    assert data.classes[0] == "airplane" and data.labels.tolist() == [0] * 5
