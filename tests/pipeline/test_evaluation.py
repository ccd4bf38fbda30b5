import numpy as np

from pipeline.evaluation import TrainRecipe, evaluate_set


def test_classifiers_learn_digits_from_a_small_set(digits_dir):
    from pipeline.datasets import read_dataset

    train = read_dataset(str(digits_dir / "train"), "webdataset")
    test = read_dataset(str(digits_dir / "test"), "webdataset")
    idx = np.concatenate([train.indices_of(c)[:20] for c in range(10)])
    recipe = TrainRecipe(steps=150)
    for arch in ("convnet", "mlp"):
        result = evaluate_set(train.images[idx], train.labels[idx], test.images, test.labels,
                              10, seeds=[0, 1], arch=arch, recipe=recipe)
        assert result["mean"] > 70, (arch, result)  # chance is 10
        assert len(result["accuracies"]) == 2


def test_a_classifier_on_noise_labels_is_near_chance(digits_dir):
    from pipeline.datasets import read_dataset

    train = read_dataset(str(digits_dir / "train"), "webdataset")
    test = read_dataset(str(digits_dir / "test"), "webdataset")
    shuffled = np.random.default_rng(0).permutation(train.labels[:200])
    result = evaluate_set(train.images[:200], shuffled, test.images, test.labels, 10,
                          seeds=[0], recipe=TrainRecipe(steps=30))
    assert result["mean"] < 30
