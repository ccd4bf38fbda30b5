from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.config import NoptConfig
from pipeline.datasets import read_dataset
from pipeline.tensors import to_model_space
from pipeline.ddim import ddim_advance, ddim_invert, ddim_sample
from pipeline.features import FixedEncoder
from pipeline.kernels import mmd_herding
from pipeline.nopt import (_class_slices, data_free_reference, fit_start, initial_noise, mmd2,
                           optimize_classes, sample_images, shell_penalty, squared_distances_on,
                           start_and_targets)
from pipeline.prior import load_prior


def _reference(label: int, n: int = 40) -> torch.Tensor:
    """A synthetic 'class distribution': bright blobs at a class-dependent position."""
    gen = torch.Generator().manual_seed(label)
    x = torch.full((n, 1, 8, 8), -1.0)
    x[:, :, label % 6:label % 6 + 3, 2:5] = 0.8
    return (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def test_mmd_is_zero_for_identical_sets_and_grows_with_shift():
    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    assert mmd2(x, x).abs() < 1e-6
    assert mmd2(x, x + 0.5) < mmd2(x, x + 3.0)


def test_unbiased_mmd_averages_within_set_pairs_over_distinct_pairs_only():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=gen), torch.randn(9, 4, generator=gen) + 0.5
    both = torch.cat([x, y])
    d2 = torch.cdist(both, both).pow(2)
    median = d2[~torch.eye(15, dtype=torch.bool)].median()
    k = sum(torch.exp(-d2 / (s * median)) for s in (0.5, 1.0, 2.0))
    kxx, kyy, cross = k[:6, :6], k[6:, 6:], k[:6, 6:].mean()
    distinct = lambda m: (m.sum() - m.diagonal().sum()) / (len(m) * (len(m) - 1))  # noqa: E731
    assert torch.isclose(mmd2(x, y), kxx.mean() + kyy.mean() - 2 * cross)
    assert torch.isclose(mmd2(x, y, unbiased=True), distinct(kxx) + distinct(kyy) - 2 * cross)
    # one point has no distinct pair: its set keeps the biased term
    assert torch.equal(mmd2(x[:1], y[:1], unbiased=True), mmd2(x[:1], y[:1]))


def test_the_unbiased_mmd_of_two_samples_of_one_distribution_is_near_zero_on_average():
    gen = torch.Generator().manual_seed(1)
    draws = [(torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen))
             for _ in range(400)]
    biased = torch.stack([mmd2(x, y) for x, y in draws]).mean()
    unbiased = torch.stack([mmd2(x, y, unbiased=True) for x, y in draws]).mean()
    assert unbiased.abs() < 0.1 * biased


def test_shell_penalty_is_zero_on_the_shell():
    z = torch.randn(4, 1, 8, 8)
    on_shell = z / z.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * 8.0  # ||z||^2 = d = 64
    assert shell_penalty(on_shell) < 1e-10
    assert shell_penalty(on_shell * 2) > 1


def test_noise_of_a_sample_depends_only_on_seed_class_and_index(tiny_prior):
    backend = load_prior(str(tiny_prior))
    a = initial_noise(backend, 7, 3, 4)
    b = initial_noise(backend, 7, 3, 2)
    assert torch.equal(a[:2], b)
    assert not torch.equal(a, initial_noise(backend, 8, 3, 4))


def test_zero_iterations_is_plain_sampling(tiny_prior):
    backend = load_prior(str(tiny_prior))
    cfg = NoptConfig(iterations=0, ddim_steps=3)
    [result] = optimize_classes(backend, {2: 3}, {2: _reference(2)}, cfg, seed=1)
    plain = sample_images(backend, initial_noise(backend, 1, 2, 3), torch.full((3,), 2), cfg)
    assert torch.equal(result.images, plain)
    assert result.loss_history == []


def test_nopt_reduces_the_mmd_and_is_deterministic(trained_tiny_prior, digits_dir):
    backend = load_prior(str(trained_tiny_prior))
    data = read_dataset(str(digits_dir / "train"), "webdataset")
    refs = {c: to_model_space(data.images[data.indices_of(c)]) for c in (1, 4)}
    cfg = NoptConfig(iterations=40, ddim_steps=3, learning_rate=0.1, init="noise")
    first = optimize_classes(backend, {1: 4, 4: 4}, refs, cfg, seed=0)
    again = optimize_classes(backend, {1: 4, 4: 4}, refs, cfg, seed=0)
    plain = optimize_classes(backend, {1: 4, 4: 4}, refs, NoptConfig(iterations=0, ddim_steps=3),
                             seed=0)
    for res, base in zip(first, plain):
        assert res.final_loss < 0.9 * base.final_loss
        assert res.loss_history[-1] < res.loss_history[0]
        assert res.images.shape == (4, 1, 8, 8)
        assert res.images.min() >= -1 and res.images.max() <= 1
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again))


@pytest.mark.parametrize("fit_steps, start_fraction", [(0, 0.0), (2, 0.0), (0, 0.5)])
def test_batched_classes_match_one_class_at_a_time(tiny_prior, fit_steps, start_fraction):
    backend = load_prior(str(tiny_prior))
    cfg = NoptConfig(iterations=3, ddim_steps=2, start_fit_steps=fit_steps,
                     start_fraction=start_fraction)
    refs = {0: _reference(0), 5: _reference(5)}
    together = optimize_classes(backend, {0: 2, 5: 3}, refs, cfg, seed=0)
    alone = [optimize_classes(backend, {c: n}, refs, cfg, seed=0)[0] for c, n in ((0, 2), (5, 3))]
    for a, b in zip(together, alone):
        assert torch.allclose(a.images, b.images, atol=1e-4)


def test_data_free_reference_is_model_samples(tiny_prior):
    backend = load_prior(str(tiny_prior))
    cfg = NoptConfig(ddim_steps=2)
    ref = data_free_reference(backend, 3, 6, cfg, seed=0)
    assert ref.shape == (6, 1, 8, 8)
    assert torch.equal(ref, data_free_reference(backend, 3, 6, cfg, seed=0))


class _FixedNoiseModel:
    """The tiny prior's scheduler with a noise prediction that ignores x and t: DDIM's update
    is then exactly invertible, so inversion must undo sampling up to rounding."""

    def __init__(self, backend, eps: torch.Tensor):
        self.scheduler, self.eps = backend.scheduler, eps

    def predict_noise(self, x, t, labels, guidance):
        return self.eps

    def decode(self, latents):
        return latents


def test_ddim_inversion_undoes_sampling(tiny_prior):
    backend = _FixedNoiseModel(load_prior(str(tiny_prior)),
                               torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    x = _reference(1, n=5)
    labels = torch.full((5,), 1)
    for steps in (2, 10):
        z = ddim_invert(backend, x, labels, steps)
        # float32: the first sampling step divides by sqrt(alpha_bar_999), about 0.006
        assert torch.allclose(ddim_sample(backend, z, labels, steps), x, atol=1e-2)
        assert (z - x).abs().mean() > 0.1  # it did move to the noise end


@pytest.mark.parametrize("until_step", [3, 7])
def test_partial_inversion_undoes_the_last_sampler_steps(tiny_prior, until_step):
    backend = _FixedNoiseModel(load_prior(str(tiny_prior)),
                               torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)))
    x = _reference(1, n=5)
    labels = torch.full((5,), 1)
    partial = ddim_invert(backend, x, labels, 10, until_step)
    assert torch.allclose(ddim_sample(backend, partial, labels, 10, first_step=until_step), x,
                          atol=1e-4)
    noise = ddim_invert(backend, x, labels, 10)
    # float32 again: advancing from the noise end divides by sqrt(alpha_bar_999) first
    assert torch.allclose(ddim_advance(backend, noise, labels, 10, until_step), partial,
                          atol=1e-2)
    assert (partial - noise).abs().mean() > 0.1  # a point part way, not the noise


def test_sampling_split_at_a_step_is_sampling(tiny_prior):
    backend = load_prior(str(tiny_prior))
    z, labels = initial_noise(backend, 0, 4, 3), torch.full((3,), 4)
    midway = ddim_advance(backend, z, labels, 4, 2)
    with torch.no_grad():
        whole = ddim_sample(backend, z, labels, 4)
        assert torch.allclose(ddim_sample(backend, midway, labels, 4, first_step=2), whole,
                              atol=1e-5)


def test_inverted_start_inverts_the_herded_references(tiny_prior):
    backend = load_prior(str(tiny_prior))
    reference = _reference(2, n=6)
    cfg = NoptConfig(ddim_steps=2, init_space="latent", start_fraction=0.0)
    start, _ = start_and_targets(backend, 1, 2, 8, reference, cfg, condition=2)
    flat = reference.flatten(1).numpy()
    picks = mmd_herding(flat, flat[:0], 8, 1, 2)
    assert len(picks) == 6  # the reference holds 6 images: the last 2 samples keep noise
    assert torch.allclose(start[:6], ddim_invert(backend, reference[picks], torch.full((6,), 2),
                                                 2))
    noise = initial_noise(backend, 1, 2, 8)
    assert torch.equal(start[6:], noise[6:])
    assert not torch.allclose(start[:6], noise[:6])
    for fraction in (0.0, 0.5):  # nothing inverted: the start is the noise at any fraction
        for plain in (NoptConfig(ddim_steps=2, init="noise", start_fraction=fraction),
                      NoptConfig(ddim_steps=2, iterations=0, start_fraction=fraction)):
            assert torch.equal(start_and_targets(backend, 1, 2, 8, reference, plain, 2)[0],
                               noise)


def test_herding_on_distances_computed_elsewhere_picks_what_it_computes_itself():
    # the start herds on distances computed on the accelerator; here on the CPU, the same way
    rows = torch.randn(300, 40, generator=torch.Generator().manual_seed(0)) * \
        torch.linspace(0.5, 2.0, 40)
    flat = rows.numpy()
    distances = squared_distances_on(rows)
    assert distances.dtype == np.float64 and distances.shape == (300, 300)
    for budget, weights in ((12, None), (40, np.linspace(1, 3, 300))):
        assert mmd_herding(flat, flat[:0], budget, 1, 2, target_weights=weights,
                           real_distances=distances) == \
            mmd_herding(flat, flat[:0], budget, 1, 2, target_weights=weights)
    with pytest.raises(ValueError, match="n <= reference_max"):
        mmd_herding(flat, flat[:0], 5, reference_max=100, real_distances=distances)


def test_a_start_part_way_along_inverts_that_far_and_advances_the_noise_rows(tiny_prior):
    backend = load_prior(str(tiny_prior))
    reference = _reference(2, n=6)
    cfg = NoptConfig(ddim_steps=4, start_fraction=0.5, init_space="latent")
    start, targets = start_and_targets(backend, 1, 2, 8, reference, cfg, condition=2)
    picks = mmd_herding(reference.flatten(1).numpy(), reference.flatten(1).numpy()[:0], 8, 1, 2)
    labels = torch.full((8,), 2)
    assert torch.equal(targets, reference[picks])
    assert torch.allclose(start[:6], ddim_invert(backend, reference[picks], labels[:6], 4, 2))
    noise = initial_noise(backend, 1, 2, 8)
    assert torch.allclose(start[6:], ddim_advance(backend, noise[6:], labels[6:], 4, 2))
    empty, _ = start_and_targets(backend, 1, 2, 3, reference[:0], cfg, condition=2)
    assert torch.allclose(empty, ddim_advance(backend, noise[:3], labels[:3], 4, 2))


def test_nopt_from_part_way_along_optimises_the_last_steps_without_the_shell_penalty(
        tiny_prior):
    backend = load_prior(str(tiny_prior))
    refs = {3: _reference(3, n=12)}
    cfg = NoptConfig(iterations=2, ddim_steps=4, start_fraction=0.6, prior_weight=0.1)
    [result] = optimize_classes(backend, {3: 4}, refs, cfg, seed=0)
    [no_penalty] = optimize_classes(backend, {3: 4}, refs,
                                    replace(cfg, prior_weight=0.0), seed=0)
    [from_noise] = optimize_classes(backend, {3: 4}, refs,
                                    replace(cfg, start_fraction=0.0), seed=0)
    assert torch.equal(result.images, no_penalty.images)
    assert not torch.allclose(result.images, from_noise.images, atol=1e-3)
    assert result.images.min() >= -1 and result.images.max() <= 1


def test_the_random_conv_start_herds_in_psi_space(tiny_prior):
    backend = load_prior(str(tiny_prior))
    reference = _reference(3, n=30)
    labels = torch.full((4,), 3)

    def picks_in(rows):
        return mmd_herding(rows, rows[:0], 4, 1, 3)

    psi = FixedEncoder("random_conv", 1, 1).fit(reference)
    picks = picks_in(psi(reference).numpy())
    assert picks != picks_in(reference.flatten(1).numpy())  # the two spaces pick apart here
    start, _ = start_and_targets(backend, 1, 3, 4, reference, NoptConfig(
        ddim_steps=2, init_space="random_conv", start_fraction=0.0), condition=3)
    assert torch.allclose(start, ddim_invert(backend, reference[picks], labels, 2))


class _GaussianDataModel(_FixedNoiseModel):
    """The exact noise prediction for data ~ N(mean, std^2 I): DDIM is then a smooth map from z
    to an image, which first-order inversion at a few steps undoes only approximately."""

    def __init__(self, backend, mean: torch.Tensor, std: float):
        self.scheduler, self.mean, self.var = backend.scheduler, mean, std ** 2
        self.latent_shape, self.device = backend.latent_shape, backend.device

    def predict_noise(self, x, t, labels, guidance):
        alpha = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        shrink = (1 - alpha).sqrt() / (alpha * self.var + 1 - alpha)
        return (x - alpha.sqrt() * self.mean) * shrink

    def encode(self, images):
        return images


def test_fitting_the_start_brings_its_samples_closer_to_the_inverted_images(tiny_prior):
    backend = _GaussianDataModel(load_prior(str(tiny_prior)), torch.zeros(1, 1, 8, 8), 0.5)
    cfg = NoptConfig(ddim_steps=3, start_fit_steps=20, init_space="latent")
    refs = {2: _reference(2, n=3), 5: _reference(5, n=30)}
    counts = {2: 5, 5: 4}  # class 2 holds 3 images: its last 2 samples start from noise
    starts = {c: start_and_targets(backend, 0, c, counts[c], refs[c], cfg, c) for c in counts}
    targets = {c: starts[c][1] for c in counts}
    z = torch.cat([starts[c][0] for c in counts])
    labels = torch.tensor([2] * 5 + [5] * 4)
    slices = _class_slices(sorted(counts), counts)
    fitted = fit_start(backend, z, labels, targets, slices, cfg)

    def error(latents, c):
        rows = slice(slices[c].start, slices[c].start + len(targets[c]))
        images = ddim_sample(backend, latents[rows], labels[rows], cfg.ddim_steps)
        return (images - targets[c]).pow(2).sum().item()

    for c in counts:
        assert error(fitted, c) < 0.5 * error(z, c)
    assert torch.equal(fitted[3:5], z[3:5])  # no image to fit: left as seeded noise
    assert torch.equal(fitted, fit_start(backend, z, labels, targets, slices, cfg))
