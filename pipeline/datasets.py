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
from collections import Counter
from dataclasses import dataclass

import numpy as np

from pipeline.config import INPUT_LAYOUTS
from pipeline.errors import DscoError
from pipeline.images import decode_image
from pipeline.storage import filesystem, join, parse_json, read_bytes, with_retries

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
                        "folder or prefix that exists; point it at the dataset's folder (not "
                        "at one of its shards; for digits: run `dsco prepare-digits`).")
    details = with_retries(f"list {url}", lambda: fs.find(root, detail=True))
    files, compressed = [], []
    for path, info in sorted(details.items()):
        rel = posixpath.relpath(path, root)
        if _hidden(rel):  # .DS_Store, macOS ._ files, .git: never samples
            continue
        keep = rel.endswith(".tar") if layout == "webdataset" else \
            rel.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS and "/" in rel
        if keep or rel == "classes.json":
            version = str(info.get("ETag") or info.get("etag") or info.get("mtime") or "")
            files.append(InputFile(rel, int(info.get("size") or 0), version))
        elif rel.endswith((".tar.gz", ".tgz")):
            compressed.append(rel)
    if layout == "webdataset" and compressed:  # skipped, they would lose their samples
        raise DscoError(f"the dataset {url!r} holds compressed shards ({compressed[0]!r}, "
                        f"{len(compressed)} in all), which DsCo does not read; decompress them "
                        "to .tar (gzip -d, then rename to .tar).")
    if not any(f.path != "classes.json" for f in files):
        what = "*.tar shards" if layout == "webdataset" else "class folders with images"
        raise DscoError(f"the dataset {url!r} (input.url, or train-prior's --data) holds no "
                        f"{what} (layout {layout!r}); check the URL and the layout "
                        "(input.layout, or --layout).")
    return files


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


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
        names = folder_classes(files)
        class_id = {name: i for i, name in enumerate(names)}
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


def checked_class_sizes(counts: dict[int, int], names: list[str] | None,
                        url: str) -> list[int]:
    """Samples per class 0..C-1 from ``counts`` (label -> samples); C is the number of names
    in classes.json, else the largest label + 1. Refuses negative labels, labels past the
    names, and classes without samples (a gap in the labels shifts nothing silently)."""
    if any(label < 0 for label in counts):
        raise DscoError(f"dataset {url!r} has a negative class label ({min(counts)}); labels "
                        "must be 0..C-1.")
    top = max(counts, default=-1)
    if names is not None and top >= len(names):
        raise DscoError(f"dataset {url!r}: classes.json names {len(names)} classes but labels "
                        f"go up to {top}.")
    sizes = [counts.get(c, 0) for c in range(len(names) if names is not None else top + 1)]
    empty = [c for c, n in enumerate(sizes) if n == 0]
    if empty:
        named = [f"{c} ({names[c]!r})" if names else str(c) for c in empty[:5]]
        raise DscoError(f"dataset {url!r} has no samples of class {', '.join(named)}"
                        f"{f' and {len(empty) - 5} more' if len(empty) > 5 else ''}: every "
                        "class 0..C-1 needs samples (C from classes.json, else the largest "
                        "label + 1). Relabel the data without gaps, or list only the classes "
                        "it has in classes.json.")
    return sizes


def folder_classes(files: list[InputFile]) -> list[str]:
    """The class names of a ``folders`` listing, sorted: class i is the i-th folder."""
    return sorted({f.path.split("/", 1)[0] for f in files if f.path != "classes.json"})


def listed_class_names(url: str, layout: str, files: list[InputFile]) -> list[str] | None:
    """The class names a listing gives before any sample is read: the folders, or
    classes.json; None where they come from the labels alone."""
    if layout == "folders":
        return folder_classes(files)
    if any(f.path == "classes.json" for f in files):
        source = join(url, "classes.json")
        return class_names_of(read_bytes(source), source)
    return None


def count_per_class(url: str, layout: str) -> list[int]:
    """Samples per class label, without decoding images (folders: from the listing alone;
    webdataset: each shard is read, but only its ``.cls`` members are parsed)."""
    files = list_input(url, layout)
    if layout == "folders":
        per_folder = Counter(f.path.split("/", 1)[0] for f in files if f.path != "classes.json")
        return [per_folder[name] for name in folder_classes(files)]
    fs, root = filesystem(url)
    counts: Counter = Counter()
    names = None
    for f in files:
        data = with_retries(f"read {f.path}", lambda p=f.path: fs.cat_file(f"{root}/{p}"))
        if f.path == "classes.json":
            names = class_names_of(data, f"{url}/classes.json")
        else:
            counts.update(label for _, label, _, _ in input_samples_in_tar(data, f.path))
    return checked_class_sizes(counts, names, url)


def input_samples_in_tar(data: bytes, shard: str) -> list[tuple[str, int, bytes, str]]:
    """(key, label, image bytes, image extension) of every sample of a WebDataset shard."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data))
        files = [m for m in tar.getmembers() if m.isfile()]
        members = {m.name: tar.extractfile(m).read() for m in files}
        cut_off = _ends_early(tar, data)
    except (tarfile.TarError, OSError, EOFError, AttributeError) as exc:
        raise _unreadable(shard, exc) from exc
    if cut_off:
        raise DscoError(f"input shard {shard!r} is cut off or damaged after its "
                        f"{len(members)} readable files ({cut_off}): its other samples would "
                        "be lost without a word. Re-create or re-copy it.")
    if len(members) != len(files):  # appended to (tar -r): which copy is meant is unknown
        again = next(name for name, n in Counter(m.name for m in files).items() if n > 1)
        raise DscoError(f"input shard {shard!r} holds {again!r} more than once; re-create it "
                        "with one copy of each file.")
    by_key: dict[str, dict[str, bytes]] = {}
    for name, payload in members.items():
        named = _key_and_extension(name)
        if named is not None:
            by_key.setdefault(named[0], {})[named[1]] = payload
    return [_input_sample(key, parts, shard) for key, parts in by_key.items()]


def first_input_samples(stream, shard: str, limit: int) -> list[tuple[str, int, bytes, str]]:
    """The first ``limit`` samples of a WebDataset shard (as ``input_samples_in_tar``), read
    from the open file ``stream`` only as far as they reach. A sample's files are adjacent in
    a WebDataset shard, as every WebDataset reader assumes (a shard where they are not is
    refused: Ray Data's reader, which the embed stage uses, would split its samples)."""
    out: list[tuple[str, int, bytes, str]] = []
    key, parts = None, {}
    finished: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                named = _key_and_extension(member.name) if member.isfile() else None
                if named is None:
                    continue
                if named[0] != key:
                    if parts:
                        out.append(_streamed_sample(key, parts, shard))
                        finished.add(key)
                    if len(out) == limit:
                        return out
                    if named[0] in finished:
                        raise DscoError(f"the files of sample {named[0]!r} are not next to "
                                        f"each other in input shard {shard!r}; WebDataset "
                                        "readers (doping.embed: ray_data) need them together: "
                                        "re-create the shard with each sample's files in a row.")
                    key, parts = named[0], {}
                if named[1] in parts:
                    raise DscoError(f"input shard {shard!r} holds {member.name!r} more than "
                                    "once; re-create it with one copy of each file.")
                parts[named[1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _unreadable(shard, exc) from exc
    return out + ([_streamed_sample(key, parts, shard)] if parts else [])


def _streamed_sample(key: str, parts: dict[str, bytes], shard: str) -> tuple[str, int, bytes, str]:
    """``_input_sample`` for files read in a row: a missing file may only lie further on."""
    if "cls" not in parts or not any(e in parts for e in IMAGE_EXTENSIONS):
        raise DscoError(f"sample {key!r} in input shard {shard!r} has only {sorted(parts)} "
                        "where its files end: a sample needs an image and a .cls file, next to "
                        "each other (WebDataset readers, doping.embed: ray_data among them, "
                        "read a sample's files in a row).")
    return _input_sample(key, parts, shard)


def _unreadable(shard: str, exc: Exception) -> DscoError:
    return DscoError(f"input shard {shard!r} is not a readable tar ({exc}); "
                     "re-create it or remove it from the input.")


def _key_and_extension(name: str) -> tuple[str, str] | None:
    """A tar member's sample key and lower-case extension; None for hidden or extension-less
    files, which are no samples."""
    base = posixpath.basename(name)
    if "." not in base or base.startswith("."):
        return None
    stem, ext = base.split(".", 1)  # as webdataset does: the key keeps dotted folders
    return posixpath.join(posixpath.dirname(name), stem), ext.lower()


def _input_sample(key: str, parts: dict[str, bytes], shard: str) -> tuple[str, int, bytes, str]:
    """(key, label, image bytes, image extension) of one sample's files, checked."""
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
    return key, label, parts[ext], ext


def _ends_early(tar: tarfile.TarFile, data: bytes) -> str:
    """Why an uncompressed tar stops before its end (tarfile stops silently at a header that
    was cut off), or '' when only the end-of-archive zero blocks follow its last member."""
    if tar.fileobj.__class__ is not io.BytesIO:  # compressed: the stream checks itself
        return ""
    rest = data[tar.offset:]  # empty for writers that leave out the end-of-archive blocks
    if rest.strip(b"\0"):
        return f"{len(rest)} bytes after the last readable file are not a tar entry"
    return ""


def check_unique_keys(keys: list[str], url: str) -> None:
    """Refuse a dataset that holds a sample key twice (``keys`` sorted): which sample a key
    means is unknown."""
    twice = next((a for a, b in zip(keys, keys[1:]) if a == b), None)
    if twice is not None:
        raise duplicate_key_error(twice, url)


def duplicate_key_error(key: str, url: str) -> DscoError:
    """The error for a dataset that holds the sample key ``key`` more than once."""
    return DscoError(f"dataset {url!r} has the sample key {key!r} more than once (in two "
                     "shards, or as two images in one folder); keys must be unique.")


def _decode_all(samples, names, url, files) -> LabelledImages:
    samples.sort(key=lambda s: s[0])
    keys = [s[0] for s in samples]
    check_unique_keys(keys, url)
    if not samples:
        raise DscoError(f"dataset {url!r} holds no samples (its shards are empty); check "
                        "input.url.")
    images = [decode_image(s[2], s[0]) for s in samples]
    shapes = Counter(im.shape for im in images)
    if len(shapes) != 1:
        usual = shapes.most_common(1)[0][0]
        odd, shape = next((key, im.shape) for key, im in zip(keys, images) if im.shape != usual)
        raise DscoError(f"dataset {url!r} mixes image shapes (H, W, C) {sorted(shapes)}: e.g. "
                        f"{odd!r} is {shape} where most are {usual}. Convert every image to "
                        "one size and one mode (grayscale or RGB) before concentrating.")
    labels = np.array([s[1] for s in samples], dtype=np.int64)
    sizes = checked_class_sizes(Counter(labels.tolist()), names, url)
    names = names or [str(i) for i in range(len(sizes))]
    return LabelledImages(keys, labels, np.stack(images), [s[2] for s in samples],
                          [s[3] for s in samples], list(names), files)
