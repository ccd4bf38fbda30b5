"""NOpt's second pass: the weighted MMD target, the hardness weights, and the pass itself
continuing from a kept first pass."""
import numpy as np
import pytest
import torch

from pipeline.config import NoptConfig
from pipeline.evaluation import TrainRecipe
from pipeline.hardness import HardnessNets, synthetic_set, train_hardness_nets
from pipeline.images import encode_png
from pipeline.nopt import mmd2
from pipeline.planning import ClassBudget, WorkUnit
from pipeline.samples import Sample, UnitOutput
from pipeline.synthesize import NoiseOptimizerStage

SHORT = TrainRecipe(steps=100)  # the job trains with the evaluation's 1200 steps


def test_uniform_weights_give_the_unweighted_mmd_at_any_scale():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=gen), torch.randn(9, 4, generator=gen) + 0.5
    for unbiased in (False, True):
        plain = mmd2(x, y, unbiased)
        for scale in (1.0, 3.5):
            weighted = mmd2(x, y, unbiased, torch.full((9,), scale))
            assert torch.isclose(weighted, plain, atol=1e-6), (unbiased, scale)


def test_weight_on_the_references_near_the_set_lowers_its_mmd():
    gen = torch.Generator().manual_seed(1)
    near, far = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen) + 4.0
    x, y = near + 0.1 * torch.randn(8, 3, generator=gen), torch.cat([near, far])
    toward_near = torch.cat([torch.full((8,), 3.0), torch.ones(8)])
    toward_far = torch.cat([torch.ones(8), torch.full((8,), 3.0)])
    for unbiased in (False, True):
        plain = mmd2(x, y, unbiased)
        assert mmd2(x, y, unbiased, toward_near) < plain < mmd2(x, y, unbiased, toward_far)


def _blobs(value: int, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(value, 12, (count, 8, 8, 1)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dark_and_bright_nets() -> bytes:
    """Hardness nets trained on a set whose class 0 is dark and class 1 bright."""
    images = np.concatenate([_blobs(30, 20, 0), _blobs(220, 20, 1)])
    return train_hardness_nets(images, np.repeat([0, 1], 20), 2, seed=0, recipe=SHORT)


def test_the_images_the_set_misclassifies_weigh_most(dark_and_bright_nets):
    nets = HardnessNets(dark_and_bright_nets)
    references = np.concatenate([_blobs(30, 12, 2), _blobs(220, 3, 3)])  # 3 look like class 1
    weights = nets.weights(references, 0, beta=0.5)
    assert weights.shape == (15,) and bool((weights > 0).all())
    assert weights[12:].min() > weights[:12].max()
    assert weights.max() <= np.exp(0.5 * 3.0) + 1e-5  # z is clipped to +-3
    assert torch.allclose(nets.weights(references, 0, beta=0.0), torch.ones(15))


def test_the_nets_are_the_same_whenever_they_are_trained_from_the_same_set():
    images = np.concatenate([_blobs(30, 6, 4), _blobs(220, 6, 5)])
    labels = np.repeat([0, 1], 6)
    first = HardnessNets(train_hardness_nets(images, labels, 2, seed=3, recipe=SHORT))
    again = HardnessNets(train_hardness_nets(images, labels, 2, seed=3, recipe=SHORT))
    references = _blobs(120, 10, 6)
    assert torch.equal(first.weights(references, 1, 1.0), again.weights(references, 1, 1.0))


def test_the_synthetic_set_is_every_units_synthetic_images_in_unit_order():
    def output(unit_id: int, label: int, value: int) -> UnitOutput:
        image = encode_png(np.full((8, 8, 1), value, dtype=np.uint8))
        return UnitOutput(unit_id, [Sample(f"s{unit_id}", label, "c", "synthetic", image),
                                    Sample(f"r{unit_id}", label, "c", "real", image)])

    images, labels = synthetic_set([output(2, 5, 200), output(0, 1, 10)])
    assert images.shape == (2, 8, 8, 1) and labels.tolist() == [1, 5]
    assert images[0].max() == 10 and images[1].max() == 200


def test_a_second_pass_from_a_kept_first_pass_is_the_one_run_in_one_go(tiny_prior, digits_dir):
    from pipeline.datasets import read_dataset

    train = read_dataset(str(digits_dir / "train"), "webdataset")
    references = {c: train.images[train.labels == c] for c in (0, 1)}
    cfg = NoptConfig(iterations=2, ddim_steps=2, batch_size=16, reweight_beta=0.5,
                     reweight_iterations=3, checkpointing=False)
    stage = NoiseOptimizerStage(str(tiny_prior), cfg, 0, [str(c) for c in range(10)])
    unit = WorkUnit(0, (ClassBudget(0, 2, 0), ClassBudget(1, 2, 0)), 0, 1)
    first = stage.first_pass(unit, references)
    assert sorted(first.noise) == [0, 1] and first.noise[0].shape[0] == 2
    nets = HardnessNets(train_hardness_nets(*synthetic_set([first]), 10, seed=0,
                                            recipe=SHORT))
    kept = stage.run_unit(unit, references, hardness=nets, first_pass=first)
    in_one_go = stage.run_unit(unit, references, hardness=nets)
    assert [s.image for s in kept.samples] == [s.image for s in in_one_go.samples]
    assert kept.metrics == in_one_go.metrics
    assert len(kept.metrics["0"]["loss_history"]) == 2 + 3  # both passes
    assert kept.metrics["0"]["loss_history"][:2] == first.metrics["0"]["loss_history"]
    assert not kept.noise  # nothing of the first pass is written
    # the second pass moved the images on from the first pass's (which a plain run writes)
    assert [s.image for s in stage.run_unit(unit, references).samples] == \
        [s.image for s in first.samples] != [s.image for s in kept.samples]
