import io
import os
import tarfile

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from pipeline.datasets import read_dataset
from pipeline.digits import prepare_digits


def test_split_and_encoding_are_exact(digits_dir):
    train = read_dataset(str(digits_dir / "train"), "webdataset")
    test = read_dataset(str(digits_dir / "test"), "webdataset")
    assert len(train.keys) == 1437 and len(test.keys) == 360
    digits = load_digits()
    for data, expect_test in ((train, False), (test, True)):
        for key, image, label in zip(data.keys[:50], data.images, data.labels):
            i = int(key.split("_")[1])
            assert (i % 5 == 0) == expect_test
            assert label == digits.target[i]
            expected = np.rint(digits.images[i] * 255 / 16).astype(np.uint8)
            assert np.array_equal(image[:, :, 0], expected)
    assert train.class_names == [str(d) for d in range(10)]


def test_shards_hold_grayscale_png_and_cls(digits_dir):
    with tarfile.open(digits_dir / "train" / "000000.tar") as tar:
        names = tar.getnames()[:2]
        png = tar.extractfile(names[0]).read()
        cls = tar.extractfile(names[1]).read()
    assert names[0].endswith(".png") and names[1].endswith(".cls")
    img = Image.open(io.BytesIO(png))
    assert img.mode == "L" and img.size == (8, 8)
    assert cls.decode().isdigit()


def test_preparing_again_keeps_files_untouched(tmp_path):
    prepare_digits(str(tmp_path))
    shard = tmp_path / "train" / "000000.tar"
    before = os.stat(shard).st_mtime_ns
    prepare_digits(str(tmp_path))
    assert os.stat(shard).st_mtime_ns == before
