"""psi trained on the run's real data (doping.encoder: trained_convnet), through the class
store that the doping actor uses."""
from functools import partial

import numpy as np
import pytest

import pipeline.class_store as class_store
from pipeline.class_store import InMemoryStore
from pipeline.config import load_config
from pipeline.errors import DscoError
from pipeline.evaluation import TrainRecipe
from pipeline.tensors import to_model_space
from pipeline.trained_encoder import train_features


def nearest_centroid_accuracy(vectors: np.ndarray, labels: np.ndarray) -> float:
    """How often a sample is nearest its own class's mean."""
    centroids = np.stack([vectors[labels == c].mean(0) for c in np.unique(labels)])
    d2 = ((vectors[:, None, :] - centroids[None]) ** 2).sum(-1)
    return float((d2.argmin(1) == labels).mean())


def test_the_trained_psi_is_cached_with_its_weights_and_sees_classes(digits_dir, tmp_path,
                                                                     monkeypatch):
    train, cache = str(digits_dir / "train"), str(tmp_path / "cache")
    # a short recipe keeps the test quick; the job trains with the benchmark's 1200 steps
    monkeypatch.setattr(class_store, "train_features",
                        partial(train_features, recipe=TrainRecipe(steps=150)))
    store = InMemoryStore(train, "webdataset", "trained_convnet", 3, cache)
    vectors = np.concatenate([store.embeddings(c) for c in range(10)])
    labels = np.repeat(np.arange(10), store.class_sizes())
    assert (tmp_path / "cache").joinpath(store.weights_url.rsplit("/", 1)[1]).exists()

    # its learned block sets the classes apart better than a random ConvNet's
    random_store = InMemoryStore(train, "webdataset", "random_conv", 3, cache)
    random_vectors = np.concatenate([random_store.embeddings(c) for c in range(10)])
    pixels = store.data.images[0].size  # the first block of both is the scaled pixels
    assert nearest_centroid_accuracy(vectors[:, pixels:], labels) > \
        nearest_centroid_accuracy(random_vectors[:, pixels:], labels) + 0.03

    # a second store reads the cache, psi included, and trains nothing
    def no_training(*args):
        raise AssertionError("the cached psi was trained again")

    monkeypatch.setattr(class_store, "train_features", no_training)
    cached = InMemoryStore(train, "webdataset", "trained_convnet", 3, cache)
    assert np.array_equal(np.concatenate([cached.embeddings(c) for c in range(10)]), vectors)
    new_images = to_model_space(store.images(4)[:5])  # as synthetic samples are embedded
    assert np.array_equal(cached.encoder(new_images).numpy(), store.encoder(new_images).numpy())


def test_a_trained_psi_needs_the_in_memory_store():
    with pytest.raises(DscoError, match="doping.embed: memory"):
        load_config(None, ["input.url=data", "model.path=prior", "output=out",
                           "doping.encoder=trained_convnet", "doping.embed=ray_data"])
    with pytest.raises(DscoError, match="trained_convnet"):  # named among the choices
        load_config(None, ["input.url=data", "model.path=prior", "output=out",
                           "doping.encoder=trained"])
