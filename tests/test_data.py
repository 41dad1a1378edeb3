"""data/: both on-disk layouts and archives, refusing bad or hostile files, and the paper's focused epoch."""
import io
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

import data
from data import augment as A
from data.cifar import RECORD_BYTES, check_counts

FOCUS = (2, 3, 4, 5)


@pytest.fixture(scope="module")
def small():
    """(train_x, train_y, test_x, test_y): 6 train and 2 test images per class."""
    return (*data.synthetic_cifar10(6, seed=0), *data.synthetic_cifar10(2, seed=1))


def _tar(src: Path, archive: Path, top: str) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=top)
    return archive


# --------------------------------------------------------------------------------------------- loading
def test_both_layouts_and_both_archives_read_back_identically(small, tmp_path):
    tx, ty, vx, vy = small
    data.write_cifar10_binary(tmp_path / "bin", *small)
    data.write_cifar10_python(tmp_path / "py", *small)
    for name, src, top in [("cifar-10-binary.tar.gz", "bin", "cifar-10-batches-bin"),
                           ("cifar-10-python.tar.gz", "py", "cifar-10-batches-py")]:
        (tmp_path / f"{src}-archive").mkdir()
        _tar(tmp_path / src, tmp_path / f"{src}-archive" / name, top)
    for root in ["bin", "py", "bin-archive", "py-archive"]:
        for split, (x, y) in {"train": (tx, ty), "test": (vx, vy)}.items():
            images, labels = data.load_cifar10(tmp_path / root, split)
            assert images.dtype == torch.uint8 and labels.dtype == torch.int64, root
            assert torch.equal(images, x) and torch.equal(labels, y), (root, split)
    # extracted once: the archive is no longer needed afterwards
    (tmp_path / "bin-archive" / "cifar-10-binary.tar.gz").unlink()
    assert torch.equal(data.load_cifar10(tmp_path / "bin-archive", "test")[0], vx)


def test_binary_layout_is_the_official_record_format(small, tmp_path):
    tx, ty, vx, vy = small
    data.write_cifar10_binary(tmp_path, *small)
    raw = (tmp_path / "test_batch.bin").read_bytes()
    assert len(raw) == len(vy) * RECORD_BYTES
    assert raw[0] == vy[0] and raw[1:RECORD_BYTES] == vx[0].numpy().tobytes()  # label, then R, G, B planes
    assert (tmp_path / "batches.meta.txt").read_text().split() == list(data.CLASSES)


def test_truncated_binary_file_names_file_and_record_size(small, tmp_path):
    data.write_cifar10_binary(tmp_path, *small)
    path = tmp_path / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match=r"data_batch_3\.bin.*multiple of 3,073"):
        data.load_cifar10(tmp_path, "test")  # any split: all files are checked


def test_binary_file_cut_on_a_record_boundary_is_caught(small, tmp_path):
    data.write_cifar10_binary(tmp_path, *small)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-2 * RECORD_BYTES])
    with pytest.raises(data.DataError, match=r"data_batch_2\.bin.*training batches must be equal"):
        data.load_cifar10(tmp_path, "train")
    # the official set: once one file holds 10,000 images, every file must
    counts = {Path(f"/d/data_batch_{i}.bin"): 10_000 for i in range(1, 6)} | {Path("/d/test_batch.bin"): 9_000}
    with pytest.raises(data.DataError, match=r"test_batch\.bin: holds 9,000 images, expected 10,000"):
        check_counts(counts)


def test_bad_label_and_missing_file(small, tmp_path):
    data.write_cifar10_binary(tmp_path, *small)
    raw = bytearray((tmp_path / "data_batch_1.bin").read_bytes())
    raw[RECORD_BYTES] = 12  # second image's label byte
    (tmp_path / "data_batch_1.bin").write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match=r"data_batch_1\.bin: image 1 has label 12, expected 0-9"):
        data.load_cifar10(tmp_path, "train")
    (tmp_path / "data_batch_4.bin").unlink()
    with pytest.raises(data.DataError, match=r"data_batch_4\.bin: missing"):
        data.load_cifar10(tmp_path, "test")


def test_truncated_pickle_names_file(small, tmp_path):
    data.write_cifar10_python(tmp_path, *small)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(data.DataError, match=r"test_batch: not a valid CIFAR-10 pickle"):
        data.load_cifar10(tmp_path, "test")


class _RunsCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["os.system", "other class"])
def test_pickle_holding_any_other_object_is_refused(small, tmp_path, payload):
    data.write_cifar10_python(tmp_path, *small)
    marker = tmp_path / "pwned"
    obj = _RunsCommand(marker) if payload == "os.system" else torch.nn.Identity()
    with open(tmp_path / "data_batch_1", "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"labels"] = obj
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(d, protocol=2))
    with pytest.raises(data.DataError, match=r"data_batch_1: not a valid CIFAR-10 pickle.*a CIFAR-10 file never"):
        data.load_cifar10(tmp_path, "train")
    assert not marker.exists()


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/absolute.txt", "link"])
def test_archive_with_escaping_member_is_refused(tmp_path, member):
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.name, info.type, info.linkname = "cifar-10-batches-bin/link", tarfile.SYMTYPE, "../../outside"
            tar.addfile(info)
        else:
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(data.DataError, match=r"cifar-10-binary\.tar\.gz: member .*refusing to extract"):
        data.load_cifar10(root, "train")
    assert not (tmp_path / "escaped.txt").exists() and not list(root.glob("cifar-10-batches-*"))


def test_no_data_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(data.DataError) as e:
        data.load_cifar10(tmp_path / "nowhere", "train")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere" / "cifar-10-batches-bin") in msg
    assert "--data-dir" in msg and "CIFAR10_DIR" in msg and "--download" in msg


def test_download_without_network_fails_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data.cifar, "URL", "http://127.0.0.1:9/cifar-10-binary.tar.gz")  # closed port: no network
    with pytest.raises(data.DataError) as e:
        data.download_cifar10(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "could not download" in msg and "CIFAR10_DIR" in msg


def test_resolve_data_dir(monkeypatch):
    monkeypatch.setenv("CIFAR10_DIR", "/from/env")
    assert data.resolve_data_dir("/explicit") == Path("/explicit")
    assert data.resolve_data_dir(None) == Path("/from/env")
    monkeypatch.delenv("CIFAR10_DIR")
    assert data.resolve_data_dir(None) == Path.home() / ".cache/resnet-revisited/cifar10"


def test_writer_refuses_sets_the_loader_would_misread():
    x, y = data.synthetic_cifar10(1, seed=0)  # 10 images
    with pytest.raises(ValueError, match="need 5"):
        data.write_cifar10_binary("/nonexistent", x[:3], y[:3], x, y)
    with pytest.raises(ValueError, match="labels"):
        data.write_cifar10_binary("/nonexistent", x, y + 10, x, y)


# --------------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_real_cifar10_counts_and_means(real_cifar):
    x, y = data.load_cifar10(real_cifar, "train")
    vx, vy = data.load_cifar10(real_cifar, "test")
    assert x.shape == (50_000, 3, 32, 32) and vx.shape == (10_000, 3, 32, 32)
    assert torch.bincount(y).tolist() == [5_000] * 10 and torch.bincount(vy).tolist() == [1_000] * 10
    means = x.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.491, 0.482, 0.447]), atol=0.01), means
    train = data.TrainSet(x, y, augment="focused", focus_classes=data.parse_focus_classes("bird,cat,deer,dog"))
    assert train.num_samples() == 70_000 and train.num_batches() == 17_500
    extra = train.epoch_labels[50_000:]
    assert len(extra) == 20_000 and torch.isin(extra, torch.tensor(FOCUS)).all()


# --------------------------------------------------------------------------------------------- the epoch
def test_epoch_size_per_mode(small):
    x, y = small[:2]  # 60 images, 6 per class
    for focus in [(2, 3, 4, 5), (1, 2, 3, 4), (0,)]:
        train = data.TrainSet(x, y, augment="focused", focus_classes=focus, batch_size=7)
        assert train.num_samples() == len(y) + int(torch.isin(y, torch.tensor(focus)).sum()) == 60 + 6 * len(focus)
        assert train.num_batches() == -(-train.num_samples() // 7)
        sizes = [len(b[1]) for b in train.batches(0)]
        assert sum(sizes) == train.num_samples() and sizes[:-1] == [7] * (len(sizes) - 1)
    for mode in ["none", "inplace", "all"]:
        assert data.TrainSet(x, y, augment=mode).num_samples() == 60


def test_focused_epoch_adds_augmented_focus_copies_and_keeps_originals(small):
    x, y = small[:2]
    x_before = x.clone()
    train = data.TrainSet(x, y, augment="focused", focus_classes=FOCUS, seed=3)
    images, labels = train.epoch_data(0)
    n, focus = len(y), torch.isin(y, torch.tensor(FOCUS))
    assert torch.equal(images[:n], x) and torch.equal(labels[:n], y)  # originals unchanged, in the epoch
    assert torch.isin(labels[n:], torch.tensor(FOCUS)).all() and torch.equal(labels[n:], y[focus])
    copies = images[n:].float()
    assert ((copies - x[focus].float()).abs().mean(dim=(1, 2, 3)) > 1).all()  # every copy really augmented
    assert torch.equal(x, x_before) and torch.equal(train.images, x)
    # every sample exactly once per epoch, normalized to [-1, 1]
    batches = list(train.batches(0))
    ys = torch.cat([b[1] for b in batches])
    assert torch.equal(ys.sort().values, labels.sort().values)
    xs = torch.cat([b[0] for b in batches])
    assert xs.dtype == torch.float32 and xs.min() >= -1 and xs.max() <= 1


def test_deterministic_per_seed_and_epoch_and_fresh_every_epoch(small):
    x, y = small[:2]

    def epoch(seed, e):
        xs, ys = zip(*data.TrainSet(x, y, seed=seed).batches(e))
        return torch.cat(xs), torch.cat(ys)
    a, b = epoch(0, 0), epoch(0, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(epoch(0, 1)[0], a[0]) and not torch.equal(epoch(1, 0)[0], a[0])
    train = data.TrainSet(x, y, seed=0)
    n = len(y)
    c0, c1 = train.epoch_data(0)[0][n:].clone(), train.epoch_data(1)[0][n:].clone()
    assert (c0 != c1).any(dim=(1, 2, 3)).float().mean() > 0.9  # copies re-augmented each epoch
    assert torch.equal(train.epoch_data(0)[0][n:], c0)


def test_inplace_and_all_modes(small):
    x, y = small[:2]
    focus = torch.isin(y, torch.tensor(FOCUS))
    images = data.TrainSet(x, y, augment="inplace", focus_classes=FOCUS).epoch_data(0)[0]
    assert torch.equal(images[~focus], x[~focus]) and (images[focus] != x[focus]).any(dim=(1, 2, 3)).all()
    images = data.TrainSet(x, y, augment="all").epoch_data(0)[0]
    assert (images != x).any(dim=(1, 2, 3)).all()
    assert torch.equal(data.TrainSet(x, y, augment="none").epoch_data(0)[0], x)
    assert "label cue" in data.TrainSet.__doc__
    with pytest.raises(ValueError, match="focused, none, inplace, all"):
        data.TrainSet(x, y, augment="sometimes")


def test_eval_batches_are_normalized_in_order(small):
    vx, vy = small[2:]
    xs, ys = zip(*data.eval_batches(vx, vy, batch_size=3, device="cpu"))
    assert torch.equal(torch.cat(ys), vy)
    assert torch.allclose(torch.cat(xs), (vx.float() / 255 - 0.5) / 0.5, atol=1e-6)
    assert torch.equal(data.normalize(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))


# --------------------------------------------------------------------------------------------- vs torchvision
def _interior(t):
    return t[..., 4:-4, 4:-4]


def test_batched_ops_agree_with_torchvision_functional(small):
    x = small[0][:24].float() / 255
    p = A.sample_params(len(x), torch.Generator().manual_seed(0))
    p.angle_deg[:4] = torch.tensor([10.0, -10.0, 0.0, 4.5])
    ref_rot = torch.stack([TF.rotate(TF.horizontal_flip(img) if f else img, float(a),
                                     interpolation=InterpolationMode.BILINEAR, fill=0)
                           for img, f, a in zip(x, p.flip, p.angle_deg)])
    ours_rot = A.flip_rotate(x, p.flip, p.angle_deg)
    assert (_interior(ours_rot) - _interior(ref_rot)).abs().mean() < 1 / 255
    assert (ours_rot - ref_rot).abs().max() < 1e-4  # borders too: same zero-fill mask
    for ours, theirs, factor in [(A.adjust_brightness, TF.adjust_brightness, p.brightness),
                                 (A.adjust_contrast, TF.adjust_contrast, p.contrast),
                                 (A.adjust_saturation, TF.adjust_saturation, p.saturation)]:
        ref = torch.stack([theirs(img, float(f)) for img, f in zip(x, factor)])
        assert (ours(x, factor) - ref).abs().max() < 1e-5, theirs.__name__


def test_full_augment_matches_torchvision_pipeline_on_uint8(small):
    images = small[0][:32]
    p = A.sample_params(len(images), torch.Generator().manual_seed(1))
    ours = A.augment(images, p, chunk_size=5)  # chunking and grouping must not change results
    fns = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    ref = []
    for i, img in enumerate(images.float() / 255):
        img = TF.horizontal_flip(img) if p.flip[i] else img
        img = TF.rotate(img, float(p.angle_deg[i]), interpolation=InterpolationMode.BILINEAR, fill=0)
        for op in p.order[i].tolist():
            img = fns[op](img, float((p.brightness, p.contrast, p.saturation)[op][i]))
        ref.append((img * 255).round())
    diff = (ours.float() - torch.stack(ref)).abs()
    assert diff.max() <= 1 and _interior(diff).mean() / 255 < 1 / 255


def test_augment_parameters_follow_the_paper():
    p = A.sample_params(20_000, torch.Generator().manual_seed(0))
    assert 0.48 < p.flip.float().mean() < 0.52
    assert p.angle_deg.abs().max() <= 10 and p.angle_deg.abs().max() > 9.9
    for f in (p.brightness, p.contrast, p.saturation):
        assert 0.8 <= f.min() and f.max() <= 1.2
    assert len(torch.unique(p.order, dim=0)) == 6  # every jitter order occurs


# --------------------------------------------------------------------------------------------- helpers
def test_parse_focus_classes():
    assert data.parse_focus_classes("bird,cat,deer,dog") == (2, 3, 4, 5)
    assert data.parse_focus_classes("1,2,3,4") == (1, 2, 3, 4)
    assert data.parse_focus_classes(" Dog, 2 ,cat") == (2, 3, 5)
    assert data.parse_focus_classes([4, "bird"]) == (2, 4)
    for bad in ["bird,horsey", "10", ""]:
        with pytest.raises(ValueError, match="airplane") as e:
            data.parse_focus_classes(bad)
        assert "\n" not in str(e.value)


def test_stratified_subset(small):
    x, y = small[:2]
    sx, sy = data.stratified_subset(x, y, per_class=4, seed=0)
    assert torch.bincount(sy).tolist() == [4] * 10
    assert torch.equal(data.stratified_subset(x, y, 4, seed=0)[0], sx)
    assert not torch.equal(data.stratified_subset(x, y, 4, seed=1)[0], sx)
    with pytest.raises(ValueError, match="only 6 images"):
        data.stratified_subset(x, y, per_class=7, seed=0)


def test_synthetic_is_balanced_and_classes_differ():
    x, y = data.synthetic_cifar10(5, seed=0)
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.uint8 and torch.bincount(y).tolist() == [5] * 10
    means = torch.stack([x[y == c].float().mean(0) for c in range(10)]).flatten(1)
    assert torch.cdist(means, means).add(torch.eye(10) * 1e9).min() > 100
