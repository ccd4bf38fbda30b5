import numpy as np
import pytest

from pipeline.datasets import list_input, read_dataset
from pipeline.errors import DscoError
from pipeline.images import encode_png
from pipeline.tarfiles import build_tar


def _image(value: int, size: int = 4, channels: int = 3) -> bytes:
    return encode_png(np.full((size, size, channels), value, dtype=np.uint8))


def test_folder_layout_reads_classes_from_sorted_folders(tmp_path):
    for name, value in (("cat", 10), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            (tmp_path / name / f"img{i}.png").write_bytes(_image(value + i))
    data = read_dataset(str(tmp_path), "folders")
    assert data.class_names == ["cat", "dog"]
    assert list(data.labels) == [0, 0, 0, 1, 1, 1]
    assert data.images.shape == (6, 4, 4, 3)
    assert data.keys[0] == "cat/img0" and data.images[4, 0, 0, 0] == 201


def test_webdataset_layout_with_class_names(tmp_path):
    members = [("a.png", _image(1)), ("a.cls", b"1"), ("b.jpg", _image(2)), ("b.cls", b"0")]
    (tmp_path / "000000.tar").write_bytes(build_tar(members))
    (tmp_path / "classes.json").write_text('["zero", "one"]')
    data = read_dataset(str(tmp_path), "webdataset")
    assert data.keys == ["a", "b"] and list(data.labels) == [1, 0]
    assert data.class_names == ["zero", "one"] and data.extensions == ["png", "jpg"]
    assert [f.path for f in list_input(str(tmp_path), "webdataset")] == \
        ["000000.tar", "classes.json"]


@pytest.mark.parametrize("members, fragment", [
    ([("a.png", b"x")], "needs an image"),
    ([("a.png", b"not a png"), ("a.cls", b"0")], "cannot decode"),
    ([("a.png", _image(1)), ("a.cls", b"cat")], "not an integer"),
    ([("a.png", _image(1)), ("a.cls", b"0"), ("b.png", _image(1, size=5)), ("b.cls", b"0")],
     "mixes image shapes"),
])
def test_bad_samples_are_named(tmp_path, members, fragment):
    (tmp_path / "000000.tar").write_bytes(build_tar(members))
    with pytest.raises(DscoError, match=fragment):
        read_dataset(str(tmp_path), "webdataset")


@pytest.mark.parametrize("classes, fragment", [
    ('["zero", "on', "classes.json is not valid JSON"),
    ('{"0": "zero"}', "classes.json must be a JSON list of class names"),
])
def test_a_bad_classes_json_is_named(tmp_path, classes, fragment):
    (tmp_path / "000000.tar").write_bytes(build_tar([("a.png", _image(1)), ("a.cls", b"0")]))
    (tmp_path / "classes.json").write_text(classes)
    with pytest.raises(DscoError, match=fragment):
        read_dataset(str(tmp_path), "webdataset")


def test_corrupt_tar_and_missing_input(tmp_path):
    with pytest.raises(DscoError, match="not a folder or prefix that exists"):
        read_dataset(str(tmp_path / "missing"), "webdataset")
    with pytest.raises(DscoError, match="holds no"):
        read_dataset(str(tmp_path), "webdataset")
    (tmp_path / "000000.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(DscoError, match="not a readable tar"):
        read_dataset(str(tmp_path), "webdataset")
    with pytest.raises(DscoError, match="layout 'zip' is unknown"):
        read_dataset(str(tmp_path), "zip")


def test_a_run_reads_the_files_it_listed_and_refuses_ones_that_changed(tmp_path):
    shard = [("a.png", _image(1)), ("a.cls", b"0")]
    (tmp_path / "000000.tar").write_bytes(build_tar(shard))
    listing = list_input(str(tmp_path), "webdataset")
    (tmp_path / "000001.tar").write_bytes(build_tar([("b.png", _image(2)), ("b.cls", b"1")]))
    assert read_dataset(str(tmp_path), "webdataset", listing).keys == ["a"]  # listed files only
    assert read_dataset(str(tmp_path), "webdataset").keys == ["a", "b"]
    noise = np.random.default_rng(0).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    extra = [(f"c{i}.png", encode_png(np.repeat(plane[..., None], 3, 2))) for i, plane in
             enumerate(noise)]  # tars are padded to 10 KiB records: add enough to change size
    (tmp_path / "000000.tar").write_bytes(build_tar(shard + extra))
    with pytest.raises(DscoError, match="'000000.tar'.*input changed during the run"):
        read_dataset(str(tmp_path), "webdataset", listing)
