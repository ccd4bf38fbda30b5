"""Reading a labelled image dataset from any fsspec URL, in two layouts.

- ``webdataset``: tar shards under the URL, each sample ``<key>.png|jpg|jpeg|webp`` plus
  ``<key>.cls`` (integer label as text); optional ``classes.json`` (list of names) beside them.
- ``folders``: one sub-folder per class (sorted names give the ids), image files inside.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass

import numpy as np

from pipeline.config import INPUT_LAYOUTS
from pipeline.errors import DscoError
from pipeline.images import decode_image
from pipeline.storage import filesystem, parse_json, with_retries

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


@dataclass
class LabelledImages:
    """Decoded samples of one dataset: parallel arrays plus the original encoded bytes."""

    keys: list[str]
    labels: np.ndarray  # int64 [N]
    images: np.ndarray  # uint8 [N, H, W, C]
    encoded: list[bytes]  # the original file bytes, written unchanged when a sample is doped
    extensions: list[str]
    class_names: list[str]
    listing: list["InputFile"]  # the files read, with size and version (for fingerprints)

    def indices_of(self, label: int) -> np.ndarray:
        """Positions of the samples of class ``label``, in dataset order."""
        return np.flatnonzero(self.labels == label)


@dataclass(frozen=True)
class InputFile:
    """One file of the input listing, as used in the run fingerprint."""

    path: str
    size: int
    version: str  # ETag on object stores, mtime on local disks


def list_input(url: str, layout: str) -> list[InputFile]:
    """List the dataset's files with size and version, sorted; fails clearly when empty."""
    if layout not in INPUT_LAYOUTS:
        raise DscoError(f"input.layout {layout!r} is unknown; use one of {list(INPUT_LAYOUTS)}.")
    fs, root = filesystem(url)
    if not with_retries(f"stat {url}", lambda: fs.isdir(root)):
        raise DscoError(f"the dataset {url!r} (input.url, or train-prior's --data) is not a "
                        "folder or prefix that exists; point it at the dataset (for digits: "
                        "run `dsco prepare-digits`).")
    details = with_retries(f"list {url}", lambda: fs.find(root, detail=True))
    files = []
    for path, info in sorted(details.items()):
        rel = posixpath.relpath(path, root)
        keep = rel.endswith(".tar") if layout == "webdataset" else \
            rel.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "/" in rel
        if keep or rel == "classes.json":
            version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
            files.append(InputFile(rel, int(info.get("size") or 0), version))
    if not any(f.path != "classes.json" for f in files):
        what = "*.tar shards" if layout == "webdataset" else "class folders with images"
        raise DscoError(f"the dataset {url!r} (input.url, or train-prior's --data) holds no "
                        f"{what} (layout {layout!r}); check the URL and the layout "
                        "(input.layout, or --layout).")
    return files


def read_dataset(url: str, layout: str, files: list[InputFile] | None = None) -> LabelledImages:
    """Read and decode every sample of the dataset at ``url``: the files of ``files`` (the
    listing a run was fingerprinted with) or of a fresh listing. A file whose size differs from
    its listing changed after it was listed, and is refused."""
    files = list_input(url, layout) if files is None else files
    fs, root = filesystem(url)

    def read(f: InputFile) -> bytes:
        data = with_retries(f"read {f.path}", lambda: fs.cat_file(f"{root}/{f.path}"))
        if len(data) != f.size:
            raise DscoError(f"input file {f.path!r} under {url!r} is {len(data)} bytes now but "
                            f"was {f.size} when the run listed it: the input changed during the "
                            "run. Rerun once it is stable (the new listing gives a new run_id).")
        return data

    samples: list[tuple[str, int, bytes, str]] = []
    names: list[str] | None = None
    if layout == "webdataset":
        for f in files:
            data = read(f)
            if f.path == "classes.json":
                names = class_names_of(data, f"{url}/classes.json")
            else:
                samples.extend(input_samples_in_tar(data, f.path))
    else:
        folders = sorted({f.path.split("/", 1)[0] for f in files if f.path != "classes.json"})
        names = folders
        class_id = {name: i for i, name in enumerate(folders)}
        for f in files:
            if f.path == "classes.json":
                continue
            folder, filename = f.path.split("/", 1)
            data = read(f)
            stem, ext = filename.rsplit(".", 1)
            samples.append((f"{folder}/{stem}", class_id[folder], data, ext.lower()))
    return _decode_all(samples, names, url, files)


def class_names_of(data: bytes, source: str) -> list[str]:
    """The class names a ``classes.json`` holds: a JSON list of strings, class i's at i."""
    names = parse_json(data, source)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DscoError(f"{source} must be a JSON list of class names (strings), the name of "
                        f"class i at position i, e.g. [\"cat\", \"dog\"]; it holds "
                        f"{json.dumps(names)[:80]}.")
    return names


def count_per_class(url: str, layout: str) -> list[int]:
    """Samples per class label, without decoding images (folders: from the listing alone;
    webdataset: each shard is read, but only its ``.cls`` members are parsed)."""
    files = [f for f in list_input(url, layout) if f.path != "classes.json"]
    if layout == "folders":
        folders = [f.path.split("/", 1)[0] for f in files]
        return [folders.count(name) for name in sorted(set(folders))]
    fs, root = filesystem(url)
    labels: list[int] = []
    for f in files:
        data = with_retries(f"read {f.path}", lambda p=f.path: fs.cat_file(f"{root}/{p}"))
        labels.extend(label for _, label, _, _ in input_samples_in_tar(data, f.path))
    return np.bincount(np.array(labels, dtype=np.int64)).tolist() if labels else []


def input_samples_in_tar(data: bytes, shard: str) -> list[tuple[str, int, bytes, str]]:
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data))
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, AttributeError) as exc:
        raise DscoError(f"input shard {shard!r} is not a readable tar ({exc}); "
                        "re-create it or remove it from the input.") from exc
    by_key: dict[str, dict[str, bytes]] = {}
    for name, payload in members.items():
        if "." not in posixpath.basename(name):
            continue
        key, ext = name.split(".", 1)
        by_key.setdefault(key, {})[ext.lower()] = payload
    out = []
    for key, parts in by_key.items():
        ext = next((e for e in IMAGE_EXTENSIONS if e in parts), None)
        if ext is None or "cls" not in parts:
            raise DscoError(f"sample {key!r} in shard {shard!r} needs an image "
                            f"({'/'.join(IMAGE_EXTENSIONS)}) and a .cls file; it has "
                            f"{sorted(parts)}.")
        try:
            label = int(parts["cls"].decode().strip())
        except ValueError:
            raise DscoError(f"sample {key!r} in shard {shard!r} has a .cls that is not an "
                            f"integer: {parts['cls'][:20]!r}.") from None
        out.append((key, label, parts[ext], ext))
    return out


def _decode_all(samples, names, url, files) -> LabelledImages:
    samples.sort(key=lambda s: s[0])
    keys = [s[0] for s in samples]
    if len(set(keys)) != len(keys):
        raise DscoError(f"dataset {url!r} has duplicate sample keys; keys must be unique.")
    images = [decode_image(s[2], s[0]) for s in samples]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DscoError(f"dataset {url!r} mixes image shapes {sorted(shapes)}; resize every "
                        "image to one size before concentrating.")
    labels = np.array([s[1] for s in samples], dtype=np.int64)
    num_classes = int(labels.max()) + 1
    if labels.min() < 0:
        raise DscoError(f"dataset {url!r} has a negative class label; labels must be 0..C-1.")
    names = names or [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise DscoError(f"dataset {url!r}: classes.json names {len(names)} classes but labels "
                        f"go up to {num_classes - 1}.")
    return LabelledImages(keys, labels, np.stack(images), [s[2] for s in samples],
                          [s[3] for s in samples], list(names), files)
