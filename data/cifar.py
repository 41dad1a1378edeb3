"""CIFAR-10 on disk -> uint8 tensors: both official layouts, the official archives, validation, writing.

Layouts (https://www.cs.toronto.edu/~kriz/cifar.html):
  binary  `cifar-10-batches-bin/`: data_batch_{1..5}.bin, test_batch.bin; records of 1 label byte + 3,072
          pixel bytes (1,024 red, 1,024 green, 1,024 blue, row-major 32x32), i.e. CHW.
  python  `cifar-10-batches-py/`: data_batch_{1..5}, test_batch; pickled dicts {data: uint8 [n,3072],
          labels: [n ints], ...}. Read with a restricted unpickler: dicts/lists/bytes/str/ints and numpy
          array reconstruction only, so a tampered file can't run code.
  archives  cifar-10-binary.tar.gz / cifar-10-python.tar.gz in the data dir: extracted once, safely.

Counts: an official batch file holds exactly 10,000 images (50,000 train / 10,000 test). Smaller datasets
(tests write them with `write_cifar10_binary`) are accepted when consistent: the five training files hold
equal counts (+-1) and no file holds 10,000 or more. As soon as one file holds 10,000 the set claims to be
the official one, so every file must hold exactly 10,000; that catches files truncated on a record boundary.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
OFFICIAL_PER_FILE = 10_000
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BIN_DIR, PY_DIR = "cifar-10-batches-bin", "cifar-10-batches-py"
ARCHIVES = {"cifar-10-binary.tar.gz": BIN_DIR, "cifar-10-python.tar.gz": PY_DIR}
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # official MD5 of cifar-10-binary.tar.gz
DEFAULT_DIR = Path("~/.cache/resnet-revisited/cifar10")


class DataError(ValueError):
    """Missing, corrupt or unsafe CIFAR-10 data; the message is one line naming the file and the fix."""


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """`--data-dir` if given, else $CIFAR10_DIR, else ~/.cache/resnet-revisited/cifar10."""
    chosen = data_dir if data_dir else os.environ.get("CIFAR10_DIR") or DEFAULT_DIR
    return Path(chosen).expanduser()


# ---------------------------------------------------------------------------------------------- finding
def _find(root: Path) -> tuple[str, Path] | None:
    for d in (root, root / BIN_DIR, root / PY_DIR):
        if (d / "data_batch_1.bin").is_file() or (d / "test_batch.bin").is_file():
            return "bin", d
        if (d / "data_batch_1").is_file() or (d / "test_batch").is_file():
            return "py", d
    return None


def _locate(root: Path) -> tuple[str, Path]:
    found = _find(root)
    if found is None:
        for name in ARCHIVES:
            if (root / name).is_file():
                extract_archive(root / name, root)
                found = _find(root)
                break
    if found is None:
        looked = ", ".join(str(p) for p in [root / "data_batch_1.bin", root / BIN_DIR, root / PY_DIR,
                                            *(root / a for a in ARCHIVES)])
        raise DataError(f"no CIFAR-10 found (looked for {looked}); point --data-dir or CIFAR10_DIR at a local "
                        f"copy (either official layout or archive), or pass --download to fetch it")
    return found


def extract_archive(archive: Path, root: Path) -> Path:
    """Extract an official CIFAR-10 .tar.gz into root once; refuse any member that could escape root."""
    archive, root = Path(archive), Path(root)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts:
                    raise DataError(f"{archive}: member {m.name!r} points outside {root}; refusing to extract "
                                    f"(an official CIFAR-10 archive never does this)")
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"{archive}: member {m.name!r} is a link or special file; refusing to "
                                    f"extract (an official CIFAR-10 archive holds only regular files)")
            tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
            if len(tops) != 1 or not tops <= set(ARCHIVES.values()):
                raise DataError(f"{archive}: expected one top folder {BIN_DIR}/ or {PY_DIR}/, found "
                                f"{sorted(tops)}; is this the official CIFAR-10 archive?")
            top = tops.pop()
            if (root / top).exists():  # extracted before (maybe by a concurrent process)
                return root / top
            # Extract into a private temp dir, then rename: readers never see half an extraction.
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
            try:
                tar.extractall(tmp, members=members, filter="data")
                try:
                    os.replace(tmp / top, root / top)
                except OSError:
                    if not (root / top).exists():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive}: cannot extract into {root} ({type(e).__name__}: {_one_line(e)}); "
                        f"extract it somewhere writable and point --data-dir at the result") from None
    return root / top


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------------------------- reading
def check_counts(counts: dict[Path, int]) -> None:
    """Per-file and cross-file consistency; see the module docstring for the rule."""
    for path, n in counts.items():
        if n == 0:
            raise DataError(f"{path}: holds no images; expected up to {OFFICIAL_PER_FILE:,} (truncated?)")
        if n > OFFICIAL_PER_FILE:
            raise DataError(f"{path}: holds {n:,} images, more than the {OFFICIAL_PER_FILE:,} of an official "
                            f"CIFAR-10 batch file")
    if OFFICIAL_PER_FILE in counts.values():
        for path, n in counts.items():
            if n != OFFICIAL_PER_FILE:
                raise DataError(f"{path}: holds {n:,} images, expected {OFFICIAL_PER_FILE:,} like the other "
                                f"official batch files (truncated?)")
    train = {p: n for p, n in counts.items() if p.stem in TRAIN_FILES}
    if train and max(train.values()) - min(train.values()) > 1:
        small, big = min(train, key=train.get), max(train, key=train.get)
        raise DataError(f"{small}: holds {train[small]:,} images but {big.name} holds {train[big]:,}; the five "
                        f"training batches must be equal in size (truncated?)")


def _bin_counts(d: Path) -> dict[Path, int]:
    counts = {}
    for name in (*TRAIN_FILES, TEST_FILE):
        path = d / f"{name}.bin"
        if not path.is_file():
            raise DataError(f"{path}: missing; the binary layout needs data_batch_1..5.bin and test_batch.bin")
        size = path.stat().st_size
        if size % RECORD_BYTES:
            raise DataError(f"{path}: {size:,} bytes is not a multiple of {RECORD_BYTES:,} (1 label byte + "
                            f"{PIXELS:,} pixel bytes per image); the file is truncated or not CIFAR-10 binary")
        counts[path] = size // RECORD_BYTES
    return counts


def _read_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits exactly what CIFAR-10 pickles are made of; any other global (os.system, ...) is refused."""
    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy's array reconstructor, whatever its module path
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[module, name]
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at pickle protocol 2
            return _latin1_encode
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a CIFAR-10 file never contains")


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not allowed")
    return text.encode("latin1")


def _read_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing; the python layout needs data_batch_1..5 and test_batch")
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f, encoding="bytes").load()
    except Exception as e:  # truncated, corrupt or hostile: all the same to the caller
        raise DataError(f"{path}: not a valid CIFAR-10 pickle ({type(e).__name__}: {_one_line(e)}); "
                        f"refusing to load it") from None
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()} if isinstance(obj, dict) else {}
    data, labels = d.get("data"), d.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == PIXELS and isinstance(labels, list) and len(labels) == len(data)):
        raise DataError(f"{path}: expected a dict with 'data' uint8 [n, {PIXELS}] and n 'labels'; "
                        f"the file is corrupt or not CIFAR-10")
    try:
        labels_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{path}: labels are not integers; the file is corrupt or not CIFAR-10") from None
    return data.reshape(-1, 3, 32, 32), labels_array


def load_cifar10(root: str | os.PathLike, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N,3,32,32] and labels int64 [N] of split "train" or "test"; DataError if missing/corrupt."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    layout, d = _locate(Path(root).expanduser())
    names = TRAIN_FILES if split == "train" else (TEST_FILE,)
    if layout == "bin":
        counts = _bin_counts(d)  # all six files, so a test file cut on a record boundary is caught too
        check_counts(counts)
        parts = [_read_bin(d / f"{n}.bin") for n in names]
    else:
        parts = [_read_py(d / n) for n in names]
        check_counts({d / n: len(p[1]) for n, p in zip(names, parts)})
    for n, (_, labels) in zip(names, parts):
        bad = (labels < 0) | (labels > 9)
        if bad.any():
            path = d / (f"{n}.bin" if layout == "bin" else n)
            i = int(bad.argmax())
            raise DataError(f"{path}: image {i} has label {int(labels[i])}, expected 0-9; the file is corrupt")
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return images, labels


def fingerprint(train_images, train_labels, test_images, test_labels) -> str:
    """sha256 of both splits' pixels and labels, in file order: tells the official CIFAR-10 from a re-encoded
    copy (the JPEG-derived one has other pixels), so results of different data never mix."""
    digest = hashlib.sha256()
    for t, dtype in ((train_images, np.uint8), (train_labels, "<i8"), (test_images, np.uint8), (test_labels, "<i8")):
        digest.update(np.ascontiguousarray(torch.as_tensor(t).numpy(), dtype=dtype).tobytes())
    return digest.hexdigest()


def download_cifar10(root: str | os.PathLike) -> Path:
    """Fetch the official binary archive (MD5-checked by torchvision) into root and extract it safely."""
    root = Path(root).expanduser()
    if _find(root) is not None:
        return root
    from torchvision.datasets.utils import download_url  # only when asked: keeps imports light
    archive = root / "cifar-10-binary.tar.gz"
    try:
        root.mkdir(parents=True, exist_ok=True)
        download_url(URL, str(root), filename=archive.name, md5=MD5)
    except Exception as e:  # no network, proxy, MD5 mismatch, ...
        raise DataError(f"could not download CIFAR-10 from {URL} into {root} ({type(e).__name__}: "
                        f"{_one_line(e)}); without network, copy CIFAR-10 here and point --data-dir or "
                        f"CIFAR10_DIR at it") from None
    extract_archive(archive, root)
    return root


# ---------------------------------------------------------------------------------------------- writing
def _check_split(images, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(f"{what} images must be uint8 [N,3,32,32], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (len(images),) or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 9):
        raise ValueError(f"{what} labels must be N integers in 0-9")
    return images.reshape(len(images), PIXELS).numpy(), labels.numpy().astype(np.int64)


def _split_train(train_images, train_labels, test_images, test_labels):
    x, y = _check_split(train_images, train_labels, "train")
    tx, ty = _check_split(test_images, test_labels, "test")
    parts = list(zip(np.array_split(x, 5), np.array_split(y, 5)))
    sizes = [len(p[1]) for p in parts] + [len(ty)]
    official = sizes == [OFFICIAL_PER_FILE] * 6
    if min(sizes) == 0 or (max(sizes) >= OFFICIAL_PER_FILE and not official):
        raise ValueError(f"write {len(y):,} train / {len(ty):,} test images: need 5..{5 * (OFFICIAL_PER_FILE - 1):,} "
                         f"train and 1..{OFFICIAL_PER_FILE - 1:,} test (smaller than the official set), or exactly "
                         f"50,000 / 10,000")
    return parts, (tx, ty)


def write_cifar10_binary(root, train_images, train_labels, test_images, test_labels) -> Path:
    """Write the official binary layout into root (data_batch_1..5.bin, test_batch.bin, batches.meta.txt)."""
    parts, test = _split_train(train_images, train_labels, test_images, test_labels)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in zip((*TRAIN_FILES, TEST_FILE), (*parts, test)):
        np.concatenate([y.astype(np.uint8)[:, None], x], axis=1).tofile(root / f"{name}.bin")
    (root / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n\n")
    return root


def write_cifar10_python(root, train_images, train_labels, test_images, test_labels) -> Path:
    """Write the official python (pickle) layout into root, shaped like the official files."""
    parts, test = _split_train(train_images, train_labels, test_images, test_labels)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    batch_names = [f"training batch {i} of 5" for i in range(1, 6)] + ["testing batch 1 of 1"]
    for name, batch_name, (x, y) in zip((*TRAIN_FILES, TEST_FILE), batch_names, (*parts, test)):
        d = {b"batch_label": batch_name.encode(), b"labels": [int(v) for v in y], b"data": np.ascontiguousarray(x),
             b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(y))]}
        (root / name).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": len(parts[0][1]),
            b"num_vis": PIXELS}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


# ---------------------------------------------------------------------------------------------- subsets
def synthetic_cifar10(n_per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny learnable fake CIFAR-10: per class a distinct colour and stripe orientation, plus noise.

    Both cues survive the paper's augmentation (flip, +-10 deg, jitter 0.2), so a small CNN learns it in an epoch.
    """
    g = torch.Generator().manual_seed(seed)
    k = torch.arange(10, dtype=torch.float32)
    hue = 2 * torch.pi * k / 10
    colour = torch.stack([torch.cos(hue), torch.cos(hue - 2.094), torch.cos(hue + 2.094)], 1)  # [10,3]
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = torch.pi * k / 10
    stripes = torch.sin(0.8 * (xx * torch.cos(angle)[:, None, None] + yy * torch.sin(angle)[:, None, None]))
    base = 128 + 60 * colour[:, :, None, None] + 35 * stripes[:, None]  # [10,3,32,32]
    labels = torch.arange(10).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    noise = 25 * torch.randn(len(labels), 3, 32, 32, generator=g)
    images = (base[labels] + noise).round().clamp(0, 255).to(torch.uint8)
    return images, labels.to(torch.int64)


def stratified_subset(images: torch.Tensor, labels: torch.Tensor, per_class: int, seed: int = 0):
    """The same number of images from every class (chosen by seed), kept in their original order."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(10):
        idx = (labels == c).nonzero().flatten()
        if len(idx) < per_class:
            raise ValueError(f"subset of {per_class} per class: class {c} ({CLASSES[c]}) has only {len(idx)} images")
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:per_class].to(idx.device)])
    keep = torch.cat(chosen).sort().values
    return images[keep], labels[keep]


def parse_focus_classes(spec) -> tuple[int, ...]:
    """"bird,cat,deer,dog" or "2,3,4,5" (or a sequence of names/indices) -> sorted unique label indices."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = set()
    for item in items:
        s = str(item).strip().lower()
        if s.isdigit() and int(s) < 10:
            out.add(int(s))
        elif s in CLASSES:
            out.add(CLASSES.index(s))
        else:
            raise ValueError(f"unknown focus class {str(item).strip()!r}; use names or indices 0-9: "
                             + ", ".join(f"{i}={c}" for i, c in enumerate(CLASSES)))
    if not out:
        raise ValueError("focus classes are empty; give e.g. 'bird,cat,deer,dog' or '2,3,4,5'")
    return tuple(sorted(out))
