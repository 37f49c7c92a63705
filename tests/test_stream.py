"""Streaming data against the in-memory fast path: the same batches, shards, presets, the cache
threshold, and bad images as one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from acc import api
from acc.cli import main
from acc.data.augment import View, cover_size
from acc.data.folder import FolderSource
from acc.data.preprocess import Preprocess
from acc.data.shard import global_batches, shard_rows
from acc.data.sources import open_source
from acc.data.stream import StreamData
from acc.data.tensor_data import TensorData
from acc.errors import InputError
from acc.prune.pipeline import PruneOptions, load_training_data
from acc.prune.rates import Rates

from onnx_export import export_legacy

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "data" / "cifar10_demo"
CIFAR_PRE = Preprocess(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616), size=(32, 32))


def demo_stream(workers: int, count: int = 300) -> StreamData:
    source = open_source(DEMO / "train.jpeg.npz")
    indices = np.sort(np.random.default_rng(0).choice(len(source), count, replace=False))
    return StreamData(source, View.for_data(CIFAR_PRE, source.raw), indices, workers=workers)


def all_batches(data, **kwargs):
    return [(x, y) for x, y in data.batches(64, generator=torch.Generator().manual_seed(7), **kwargs)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_gives_the_in_memory_batches_on_cifar(workers):
    stream = demo_stream(workers)
    memory = stream.in_memory()
    assert isinstance(memory, TensorData) and memory.inputs.dtype == torch.uint8 and memory.in_memory() is memory
    for kwargs in ({}, {"shuffle": True, "augment": True}):
        streamed, held = all_batches(stream, **kwargs), all_batches(memory, **kwargs)
        assert len(streamed) == len(held) == 5
        for (xs, ys), (xm, ym) in zip(streamed, held):
            assert torch.equal(xs, xm) and torch.equal(ys, ym)
    assert stream.describe()["path"] == "stream" and memory.describe()["path"] == "memory"
    sample = stream.sample(50, seed=3)
    assert isinstance(sample, StreamData) and torch.equal(sample.labels, memory.sample(50, seed=3).labels)
    assert stream.sample(10_000) is stream


@pytest.mark.parametrize("world", [2, 3])
def test_shards_partition_the_global_batch(world):
    memory = demo_stream(0, count=150).in_memory()  # batches of 64, 64, 22
    whole = all_batches(memory, shuffle=True, augment=True)
    for data in (memory, demo_stream(0, count=150)):
        ranks = [all_batches(data, shuffle=True, augment=True, shard=(rank, world)) for rank in range(world)]
        assert {len(r) for r in ranks} == {global_batches(150, 64, world)} == {3}
        for step, (x, y) in enumerate(whole):
            assert torch.equal(torch.cat([r[step][0] for r in ranks]), x)
            assert torch.equal(torch.cat([r[step][1] for r in ranks]), y)
    # A trailing batch that cannot give every rank a row is skipped by all of them.
    assert [len(x) for x, _ in memory.subset(range(130)).batches(64, shard=(0, 3))] == [22, 22]
    assert global_batches(130, 64, 3) == 2 and global_batches(130, 64, 1) == 3


def test_streaming_leaves_the_global_generator_alone():
    stream = demo_stream(2, count=100)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    for _ in stream.batches(64, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)):
        pass
    stream.in_memory()
    assert torch.equal(torch.rand(3), expected)  # dropout masks do not depend on the data path


def test_nhwc_layout_streams_as_it_is_held(tmp_path):
    source = FolderSource(image_folder(tmp_path, [(12, 10)] * 5))
    view = View.for_data(Preprocess(size=(8, 8), layout="NHWC", mean=(0.5,), std=(0.25,)), raw=True)
    stream = StreamData(source, view, workers=0)
    assert stream.item_shape == (8, 8, 3)
    for (xs, _), (xm, _) in zip(all_batches(stream, shuffle=True, augment=True), all_batches(stream.in_memory(), shuffle=True, augment=True)):
        assert xs.shape == (5, 8, 8, 3) and torch.equal(xs, xm)


def test_shard_rows_cover_each_row_once():
    for size in range(1, 40):
        for world in range(1, 9):
            rows = [shard_rows(size, rank, world) for rank in range(world)]
            assert rows[0][0] == 0 and rows[-1][1] == size
            assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


def test_uncompressed_pack_and_npy_are_memory_mapped(tmp_path):
    with np.load(DEMO / "train.jpeg.npz") as archive:
        np.savez(tmp_path / "train.jpeg.npz", **{key: archive[key] for key in archive.files})  # stored, not deflated
    mapped, packed = open_source(tmp_path / "train.jpeg.npz"), open_source(DEMO / "train.jpeg.npz")
    assert isinstance(mapped.jpeg, np.memmap) and not isinstance(packed.jpeg, np.memmap)
    assert np.array_equal(mapped.read(7), packed.read(7)) and np.array_equal(mapped.labels, packed.labels)
    np.save(tmp_path / "raw.npy", np.zeros((3, 8, 8, 3), np.uint8))
    assert isinstance(open_source(tmp_path / "raw.npy").inputs, np.memmap)


def image_folder(root: Path, sizes, classes=("ant", "bee"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        folder = root / classes[i % len(classes)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("preset, size", [("cifar", (24, 24)), ("resize", (24, 20)), ("imagenet", (72, 72)), ("none", (30, 40))])
def test_presets_shapes_and_determinism(tmp_path, preset, size):
    sizes = [(30, 40), (50, 30), (30, 40), (90, 120), (40, 40), (30, 40)]
    source = FolderSource(image_folder(tmp_path, sizes))
    view = View.for_data(Preprocess(size=size, augment=preset), raw=True)
    stream = StreamData(source, view, [0, 1, 5] if preset == "none" else None, workers=0)  # the 30x40 ones
    memory = stream.in_memory()
    stored = size if preset != "imagenet" else cover_size(size)
    assert memory.inputs.shape[2:] == stored
    for data in (stream, memory):
        first, again = all_batches(data, shuffle=True, augment=True), all_batches(data, shuffle=True, augment=True)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
        assert first[0][0].shape == (len(data), 3, *size)
    same = [torch.equal(s[0], m[0]) for s, m in zip(all_batches(stream), all_batches(memory))]
    assert all(same)  # evaluation views agree for every preset
    if preset in ("resize", "none"):  # no augmentation: training batches are evaluation batches, reordered
        x, _ = all_batches(memory, augment=True)[0]
        assert torch.equal(x, all_batches(memory)[0][0])
    if preset == "none":
        with pytest.raises(InputError, match="does not resize"):
            StreamData(source, view, None, workers=0).in_memory()


def test_imagenet_evaluation_covers_size_over_0875_then_crops_the_centre(tmp_path):
    ramp = np.tile(np.linspace(0, 255, 256).round().astype(np.uint8)[None, :, None], (128, 1, 3))  # 128 x 256
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "ramp.png")
    view = View.for_data(Preprocess(size=(28, 28), augment="imagenet"), raw=True)
    x, _ = next(StreamData(FolderSource(tmp_path), view, workers=0).batches(1))
    # Scaled to cover 32 x 32 the image shows columns 64..192; the central 28 of 32 are 72..184.
    row = x[0, 0, 14]
    assert abs(float(row[0]) * 255 - 74) < 3 and abs(float(row[-1]) * 255 - 182) < 3
    assert torch.equal(x[0, 0, 0], x[0, 0, -1])  # rows are alike: no vertical change in a horizontal ramp


def test_cache_threshold_picks_memory_or_stream():
    options = PruneOptions(rates=Rates(), limit=200, test_limit=100)
    train, val, test, pre = load_training_data(DEMO, ROOT / "models" / "resnet20.onnx", options, (1, 3, 32, 32))
    assert isinstance(train, TensorData) and isinstance(test, TensorData) and pre.augment == "cifar"
    info = train.describe()
    assert info["path"] == "memory" and info["images"] == 180 and info["test_images"] == 100
    assert 0 < info["decoded_mb"] < 1  # 300 uint8 images of 3x32x32
    options.cache_mb = 0.5
    streamed, sval, stest, _ = load_training_data(DEMO, ROOT / "models" / "resnet20.onnx", options, (1, 3, 32, 32))
    assert isinstance(streamed, StreamData) and isinstance(stest, StreamData) and streamed.describe()["path"] == "stream"
    assert torch.equal(streamed.labels, train.labels) and torch.equal(sval.labels, val.labels)
    assert torch.equal(next(sval.batches(64))[0], next(val.batches(64))[0])


def tiny_model(folder: Path, size: int = 16) -> Path:
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return export_legacy(net, folder / "tiny.onnx", (1, 3, size, size))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_model(tmp_path_factory.mktemp("tiny"))


def truncated_jpeg(seed: int) -> bytes:
    """A JPEG cut short in its pixel data: its header reads, its pixels do not."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) * 6 // 10]


def bad_data(tmp_path: Path, case: str) -> tuple[Path, str]:
    """A dataset with one defect, and what the error must mention."""
    data = image_folder(tmp_path / "data" / "train", [(20, 20)] * 12).parent
    if case in ("truncated", "not_an_image"):
        bad = data / "train" / "bee" / "broken.jpg"
        bad.write_bytes(truncated_jpeg(1) if case == "truncated" else b"not a jpeg at all")
        return data, "broken.jpg: unreadable image (" + ("image file is truncated" if case == "truncated" else "not an image")
    if case == "empty_classes":
        for folder in (data / "train").iterdir():
            for file in folder.iterdir():
                file.unlink()
        return data, "no images"
    image_folder(data / "test", [(20, 20)] * 4, classes=("ant", "wasp"))
    return data, "only in test: wasp"


@pytest.mark.parametrize("case", ["truncated", "not_an_image", "empty_classes", "classes_differ"])
@pytest.mark.parametrize("cache", ["1024", "0"])
def test_bad_images_are_one_line_errors(tiny, tmp_path, capsys, case, cache):
    data, mention = bad_data(tmp_path, case)
    out = tmp_path / "o.onnx"
    code = main(["prune", str(tiny), "--data", str(data), "--uniform", "0.5", "-o", str(out), "--no-progress",
                 "--epochs", "1", "--finetune-epochs", "1", "--batch-size", "4", "--cache-mb", cache, "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and "DataLoader" not in err, err
    assert mention in err
    assert not out.exists() and not Path(f"{out}.ckpt").exists()


def test_one_epoch_streamed_from_an_image_folder_verifies(tiny, tmp_path):
    data = image_folder(tmp_path / "data", [(20, 24)] * 40 + [(16, 16)] * 24, classes=("a", "b", "c", "d"))
    report = tmp_path / "report.json"
    result = api.prune(tiny, data, output=tmp_path / "p.onnx", report=report, uniform=0.5, epochs=1, finetune_epochs=1,
                       admm_iters=1, batch_size=16, cache_mb=0, workers=1, progress=False)
    assert result.report["data"]["path"] == "stream" and result.report["data"]["workers"] == 1
    assert result.report["data"]["augment"] == "cifar" and result.report["preprocess"]["augment"] == "cifar"
    assert result.report["params"]["after_dense"] < result.report["params"]["before"]
    assert result.report["verification"] and (tmp_path / "p.onnx").is_file() and report.is_file()
