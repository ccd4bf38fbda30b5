import io

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets import (count_per_class, first_input_samples, input_samples_in_tar,
                               list_input, read_dataset)
from pipeline.errors import DscoError
from pipeline.images import decode_image, encode_png
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
    ([("a.png", _image(1)), ("a.cls", b"0"), ("b.png", _image(1, size=5)), ("b.cls", b"0"),
      ("c.png", _image(1)), ("c.cls", b"0")],
     r"mixes image shapes .*: e.g. 'b' is \(5, 5, 3\) where most are \(4, 4, 3\)"),
    ([("a.png", _image(1)), ("a.cls", b"0"), ("b.png", _image(1)), ("b.cls", b"2")],
     r"has no samples of class 1: every class 0..C-1 needs samples"),
    ([("a.png", _image(1)), ("a.cls", b"-1")], "has a negative class label"),
    ([("a.png", _image(1)), ("a.cls", b"0"), ("a.cls", b"1")], "holds 'a.cls' more than once"),
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


def test_a_tar_cut_off_at_a_header_is_refused_not_read_in_part(tmp_path):
    members = [(f"s{i}.{ext}", _image(i) if ext == "png" else str(i % 2).encode())
               for i in range(4) for ext in ("png", "cls")]
    whole = build_tar(members)
    # cut inside the fourth sample's header: tarfile stops there without a word
    (tmp_path / "000000.tar").write_bytes(whole[:whole.index(b"s3.png") + 100])
    with pytest.raises(DscoError, match="'000000.tar' is cut off or damaged after its 6 "
                                        "readable files"):
        read_dataset(str(tmp_path), "webdataset")
    with pytest.raises(DscoError, match="cut off"):
        count_per_class(str(tmp_path), "webdataset")  # `dsco plan` counts the same way


def test_class_names_past_the_labels_and_compressed_shards_are_refused(tmp_path):
    (tmp_path / "000000.tar").write_bytes(build_tar([("a.png", _image(1)), ("a.cls", b"0")]))
    (tmp_path / "classes.json").write_text('["zero", "one"]')
    for count in (read_dataset, count_per_class):
        with pytest.raises(DscoError, match=r"no samples of class 1 \('one'\)"):
            count(str(tmp_path), "webdataset")
    (tmp_path / "classes.json").unlink()
    (tmp_path / "000001.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DscoError, match="holds compressed shards .*000001.tar.gz"):
        read_dataset(str(tmp_path), "webdataset")


def test_hidden_files_are_no_samples_and_dotted_folders_stay_in_the_key(tmp_path):
    for name in ("cat", "dog", ".thumbs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "img0.png").write_bytes(_image(10))
    (tmp_path / "cat" / "._img0.png").write_bytes(b"macOS resource fork")
    data = read_dataset(str(tmp_path), "folders")
    assert data.class_names == ["cat", "dog"] and data.keys == ["cat/img0", "dog/img0"]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "000000.tar").write_bytes(build_tar(
        [("v1.2/a.png", _image(1)), ("v1.2/a.cls", b"0"), ("v1.2/._a.png", b"junk")]))
    assert read_dataset(str(shards), "webdataset").keys == ["v1.2/a"]  # as webdataset keys it


def test_the_first_samples_of_a_shard_are_read_as_a_stream_only_that_far():
    noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    members = [(f"s{i}.{ext}", encode_png(noise[i]) if ext == "png" else str(i % 3).encode())
               for i in range(8) for ext in ("png", "cls")] + [(".hidden", b"x")]
    whole = build_tar(members)  # 12 KiB a png: past tarfile's 10 KiB read-ahead
    stream = io.BytesIO(whole)
    assert first_input_samples(stream, "000000.tar", 2) == \
        input_samples_in_tar(whole, "000000.tar")[:2]
    assert stream.tell() < whole.index(b"s4.png")  # up to the third sample's files, not more
    assert first_input_samples(io.BytesIO(whole), "000000.tar", 99) == \
        input_samples_in_tar(whole, "000000.tar")
    with pytest.raises(DscoError, match="sample 's1' in input shard '000000.tar' has only"):
        first_input_samples(io.BytesIO(build_tar(members[:3])), "000000.tar", 5)
    with pytest.raises(DscoError, match="'000000.tar' is not a readable tar"):
        first_input_samples(io.BytesIO(b"garbage" * 100), "000000.tar", 5)
    apart = build_tar([members[0], members[2], members[3], members[1]])  # s0.png ... s0.cls
    with pytest.raises(DscoError, match=r"sample 's0' in input shard '000000.tar' has only "
                                        r"\['png'\] where its files end: .* next to each other"):
        first_input_samples(io.BytesIO(apart), "000000.tar", 5)
    again = build_tar(members[:4] + [("s0.json", b"{}")])  # s0 complete, then a file of it
    with pytest.raises(DscoError, match="files of sample 's0' are not next to each other"):
        first_input_samples(io.BytesIO(again), "000000.tar", 5)
    with pytest.raises(DscoError, match="holds 's0.cls' more than once"):
        first_input_samples(io.BytesIO(build_tar(members[:2] + [members[1]])), "000000.tar", 5)


def test_a_16_bit_png_is_scaled_not_clipped():
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)).save(buf, "PNG")
    assert decode_image(buf.getvalue()).ravel().tolist() == [0, 4, 128, 255]
