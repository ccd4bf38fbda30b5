"""NOpt: optimise a diffusion model's input noise so its samples match a class distribution.

For class c and budget N (METHOD.md): z ~ N(0, I) seeded per (run seed, class, sample);
G(z) = DDIM(K steps, eta 0) with gradients through every step it runs (with
``start_fraction`` f, z is the point at step floor(f K) and G runs the steps after it);
loss = sum over feature blocks of multi-bandwidth Gaussian MMD^2(phi(G(z)), phi(real
minibatch)) + lambda * shell penalty;
Adam on z for T iterations. T = 0 is plain sampling, the built-in baseline. With
``nopt.init: inverted`` (the default) z starts at the DDIM inversions of the class's most
representative reference images instead of at fresh noise (see :func:`start_and_targets`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.config import NoptConfig
from pipeline.ddim import ddim_advance, ddim_invert, ddim_sample
from pipeline.features import FeatureMap, FixedEncoder, blocks_in_batches
from pipeline.kernels import BANDWIDTH_SCALES, MMD_REFERENCE_MAX, mmd_herding
from pipeline.prior import DiffusionBackend
from pipeline.seeding import generator


@dataclass
class ClassResult:
    """NOpt's output for one class."""

    label: int
    images: torch.Tensor  # [N, C, H, W] in [-1, 1], clamped
    loss_history: list[float]
    final_loss: float
    noise: torch.Tensor  # the optimised z the images were sampled from (a second pass starts there)


def mmd2(x: torch.Tensor, y: torch.Tensor, unbiased: bool = False,
         y_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MMD^2 between rows of x and y, Gaussian kernels at median-heuristic x {0.5,1,2}.

    The median is taken over all pairwise squared distances of the pooled set, detached, so
    the bandwidth adapts to the block's scale but is not itself optimised. ``unbiased``
    averages each set's within-set kernel over its distinct pairs (i != j) instead of all N^2
    (which weighs the pairs that push a set's points apart by (N - 1) / N); a set of one point
    has no distinct pair and keeps the biased term, which has the same gradient.
    ``y_weights`` (positive, one per row of y) makes y's side a weighted distribution: its
    terms average over y's rows (and pairs) with those weights instead of uniformly.
    """
    both = torch.cat([x, y])
    d2 = torch.cdist(both, both).pow(2)
    n = len(both)
    off_diag = d2.detach()[~torch.eye(n, dtype=torch.bool, device=d2.device)]
    median = off_diag.median().clamp_min(1e-8) if n > 1 else torch.tensor(1.0)
    kernel = sum(torch.exp(-d2 / (s * median)) for s in BANDWIDTH_SCALES)
    nx = len(x)
    if y_weights is None:
        return _within_set_mean(kernel[:nx, :nx], unbiased) + \
            _within_set_mean(kernel[nx:, nx:], unbiased) - 2 * kernel[:nx, nx:].mean()
    return _within_set_mean(kernel[:nx, :nx], unbiased) + \
        _weighted_within_mean(kernel[nx:, nx:], unbiased, y_weights) - \
        2 * (kernel[:nx, nx:] @ y_weights).mean() / y_weights.sum()


def _within_set_mean(kernel: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Mean of a set's kernel matrix: over all pairs, or (unbiased) over distinct pairs."""
    m = len(kernel)
    if not unbiased or m < 2:
        return kernel.mean()
    return (kernel.sum() - kernel.diagonal().sum()) / (m * (m - 1))


def _weighted_within_mean(kernel: torch.Tensor, unbiased: bool,
                          weights: torch.Tensor) -> torch.Tensor:
    """:func:`_within_set_mean` with pair (i, j) weighted by weights[i] * weights[j]."""
    pairs = weights[:, None] * weights[None]
    if unbiased and len(kernel) > 1:
        pairs = pairs * (1 - torch.eye(len(kernel), device=pairs.device, dtype=pairs.dtype))
    return (kernel * pairs).sum() / pairs.sum()


def shell_penalty(z: torch.Tensor) -> torch.Tensor:
    """mean_i (||z_i||^2 / d - 1)^2: keeps each noise vector on the Gaussian shell."""
    d = z[0].numel()
    return (z.flatten(1).pow(2).sum(1) / d - 1).pow(2).mean()


def initial_noise(backend: DiffusionBackend, seed: int, label: int, count: int,
                  stream: str = "z") -> torch.Tensor:
    """Noise for samples 0..count-1 of class ``label``; sample i depends only on (seed, i)."""
    shape = backend.latent_shape
    return torch.stack([torch.randn(shape, generator=generator(seed, stream, label, i))
                        for i in range(count)]).to(backend.device)


@torch.no_grad()
def start_and_targets(backend: DiffusionBackend, seed: int, label: int, count: int,
                      reference: torch.Tensor, cfg: NoptConfig, condition: int,
                      batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """z before optimisation, and the reference images its first samples were inverted from.

    ``noise`` (and any run with T = 0, plain sampling): seeded Gaussian noise, no targets.
    ``inverted``: kernel herding (the mmd selector) picks the ``count`` reference images that
    best match the reference's distribution, in the space ``cfg.init_space`` names, and their
    DDIM inversions are the start, so NOpt refines a representative set instead of a random
    draw; samples past the reference's size keep Gaussian noise. Where
    ``cfg.first_sampler_step`` k > 0 (``start_fraction``), the start is the point k sampler
    steps along instead of the noise: the references are inverted only that far, and the
    noise rows run the first k steps. Images are encoded ``batch`` at a time (a latent
    model's VAE encoder holds large activations at 256 px).
    """
    z = initial_noise(backend, seed, label, count)
    if not cfg.starts_from_references:
        return z, reference[:0]
    if len(reference) == 0:  # nothing to invert: every row is a noise row
        picks: list[int] = []
    elif cfg.init_space == "latent":
        latents = _encode(backend, reference, batch)
        picks = _herd(latents.flatten(1), count, seed, label)
        chosen = latents[picks]
    else:  # herd in psi, then encode only the picks
        psi = FixedEncoder("random_conv", reference.shape[1], seed).to(reference.device)
        picks = _herd(psi.fit_embed(reference, batch), count, seed, label)
        chosen = _encode(backend, reference[picks], batch)
    labels = torch.full((count,), condition, dtype=torch.long, device=backend.device)
    first_step = cfg.first_sampler_step
    if first_step and len(picks) < count:  # the noise rows enter part way along too
        z[len(picks):] = ddim_advance(backend, z[len(picks):], labels[len(picks):],
                                      cfg.ddim_steps, first_step, cfg.guidance)
    if picks:
        z[:len(picks)] = ddim_invert(backend, chosen, labels[:len(picks)], cfg.ddim_steps,
                                     first_step)
    return z, reference[picks]


def fit_start(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor,
              targets: dict[int, torch.Tensor], slices: dict[int, slice],
              cfg: NoptConfig) -> torch.Tensor:
    """Refine an inverted start so the sampler reproduces the images it was inverted from.

    First-order DDIM inversion at K = 10 steps is approximate (on the digits prior its samples
    land about 100 grey levels in L2 from their image, against about 250 to the nearest other
    image of the class). ``cfg.start_fit_steps`` Adam steps on the squared pixel error of
    the first ``len(targets[c])`` samples of each class's slice close about half of that gap;
    the other samples (seeded noise) are left as they are.
    """
    rows = torch.cat([torch.arange(slices[c].start, slices[c].start + len(t))
                      for c, t in targets.items()]).to(z.device)
    if len(rows) == 0:  # no class had references to invert
        return z
    goal = torch.cat(list(targets.values())).to(z.device)
    fitted = z[rows].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([fitted], lr=cfg.learning_rate)
    for _ in range(cfg.start_fit_steps):
        images = ddim_sample(backend, fitted, labels[rows], cfg.ddim_steps, cfg.guidance,
                             use_checkpointing=cfg.checkpointing,
                             first_step=cfg.first_sampler_step)
        loss = (images - goal).pow(2).flatten(1).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    start = z.clone()
    start[rows] = fitted.detach()
    return start


def _encode(backend: DiffusionBackend, images: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([backend.encode(images[s:s + batch].to(backend.device))
                      for s in range(0, len(images), batch)])


def _herd(rows: torch.Tensor, count: int, seed: int, label: int) -> list[int]:
    """Kernel herding's ``count`` picks among ``rows`` (the mmd selector, no synthetic set).
    On an accelerator the rows' squared distances to each other are computed there (float64,
    as the CPU path does): psi's pixel block makes the rows 196,608 wide at 256 px."""
    flat = rows.cpu().numpy()
    distances = squared_distances_on(rows) \
        if rows.device.type == "cuda" and len(rows) <= MMD_REFERENCE_MAX else None
    return mmd_herding(flat, flat[:0], count, seed, label, real_distances=distances)


def squared_distances_on(rows: torch.Tensor) -> np.ndarray:
    """The squared distances between ``rows``, computed in float64 on their device."""
    wide = rows.double()
    norms = (wide * wide).sum(1)
    return (norms[:, None] + norms[None] - 2 * wide @ wide.T).clamp_min(0).cpu().numpy()


@torch.no_grad()
def sample_images(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor,
                  cfg: NoptConfig, batch: int = 512, first_step: int = 0) -> torch.Tensor:
    """Plain (no-grad) DDIM samples for per-sample ``labels`` in [-1, 1], from noise ``z``
    (or from the point ``first_step`` sampler steps along)."""
    out = [ddim_sample(backend, z[s:s + batch], labels[s:s + batch], cfg.ddim_steps,
                       cfg.guidance, use_checkpointing=False,
                       first_step=first_step).clamp(-1, 1)
           for s in range(0, len(z), batch)]
    return torch.cat(out)


def data_free_reference(backend: DiffusionBackend, label: int, count: int, cfg: NoptConfig,
                        seed: int, prior_class: int | None = None) -> torch.Tensor:
    """Data-free R_c: ``count`` model samples from fresh noise (same sampler and guidance),
    generated as ``prior_class`` (default: ``label``)."""
    condition = label if prior_class is None else prior_class
    labels = torch.full((count,), condition, dtype=torch.long, device=backend.device)
    return sample_images(backend, initial_noise(backend, seed, label, count, "reference"),
                         labels, cfg)


def optimize_classes(backend: DiffusionBackend, counts: dict[int, int],
                     references: dict[int, torch.Tensor], cfg: NoptConfig, seed: int,
                     on_iteration: Callable[[], None] | None = None,
                     conditioning: dict[int, int] | None = None) -> list[ClassResult]:
    """Run NOpt for several classes at once: one batched sampler pass per iteration.

    ``counts`` maps label -> N and ``references`` label -> R_c in model space. The loss is the
    sum of the per-class losses and Adam is elementwise, so each class is optimised exactly as
    it would be alone; batching only amortises the model's per-call cost. ``on_iteration``
    is called after every iteration (progress reporting). ``conditioning`` maps a label to
    the prior class it is generated as (default: itself); noise is seeded by the label.
    """
    if not counts:
        return []
    labels_order = sorted(counts)
    conditioning = conditioning or {}
    refs = {c: references[c].to(backend.device) for c in labels_order}
    starts = {c: start_and_targets(backend, seed, c, counts[c], refs[c], cfg,
                                   conditioning.get(c, c)) for c in labels_order}
    z = torch.cat([starts[c][0] for c in labels_order])
    labels = _condition_labels(labels_order, counts, conditioning, backend.device)
    slices = _class_slices(labels_order, counts)
    if cfg.start_fit_steps:  # a noise start has no targets: fit_start leaves it as it is
        z = fit_start(backend, z, labels, {c: starts[c][1] for c in labels_order}, slices, cfg)
    z, history = _descend(backend, z, labels, slices, refs, cfg, seed,
                          range(cfg.iterations), on_iteration)
    return _class_results(backend, z, labels, slices, refs, history, cfg, seed)


def refine_classes(backend: DiffusionBackend, noise: dict[int, torch.Tensor],
                   references: dict[int, torch.Tensor], weights: dict[int, torch.Tensor],
                   cfg: NoptConfig, seed: int, on_iteration: Callable[[], None] | None = None,
                   conditioning: dict[int, int] | None = None) -> list[ClassResult]:
    """NOpt's second pass: ``cfg.reweight_iterations`` more iterations (a fresh Adam) from
    each class's optimised ``noise``, against its references weighted by ``weights`` (label
    -> one positive weight per reference image; see ``pipeline.hardness``). Iterations are
    numbered on from T, so their minibatches and feature draws are new ones. The results'
    loss histories hold this pass only; their final loss is against the unweighted R_c."""
    if not noise:
        return []
    labels_order = sorted(noise)
    conditioning = conditioning or {}
    counts = {c: len(noise[c]) for c in labels_order}
    refs = {c: references[c].to(backend.device) for c in labels_order}
    z = torch.cat([noise[c].to(backend.device) for c in labels_order])
    labels = _condition_labels(labels_order, counts, conditioning, backend.device)
    slices = _class_slices(labels_order, counts)
    iterations = range(cfg.iterations, cfg.iterations + cfg.reweight_iterations)
    z, history = _descend(backend, z, labels, slices, refs, cfg, seed, iterations,
                          on_iteration, {c: w.to(backend.device) for c, w in weights.items()})
    return _class_results(backend, z, labels, slices, refs, history, cfg, seed)


def _descend(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor,
             slices: dict[int, slice], refs: dict[int, torch.Tensor], cfg: NoptConfig,
             seed: int, iterations: range, on_iteration: Callable[[], None] | None,
             weights: dict[int, torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[int, list[float]]]:
    """Adam on ``z`` over ``iterations`` (their numbers seed the minibatches and feature
    draws); returns the final z and each class's MMD^2 per iteration. ``weights`` (label ->
    per-reference weights) tilts each class's target toward its heavier references."""
    labels_order = list(slices)
    z = z.detach().clone().requires_grad_(len(iterations) > 0)
    features = FeatureMap(cfg.feature_map, backend.image_shape[0], encode=backend.encode)
    # a fixed feature map sees the same references every iteration: embed them once
    ref_blocks = {c: blocks_in_batches(features.draw(device=backend.device), refs[c])
                  for c in labels_order} if features.fixed else {}
    first_step = cfg.first_sampler_step
    # the shell penalty keeps noise on the Gaussian shell; a partly denoised z is not noise
    prior_weight = cfg.prior_weight if first_step == 0 else 0.0
    optimizer = torch.optim.Adam([z], lr=cfg.learning_rate)
    history: dict[int, list[float]] = {c: [] for c in labels_order}
    for it in iterations:
        fake = ddim_sample(backend, z, labels, cfg.ddim_steps, cfg.guidance,
                           use_checkpointing=cfg.checkpointing, first_step=first_step)
        loss = torch.zeros((), device=backend.device)
        for c in labels_order:
            pick = torch.randperm(len(refs[c]), generator=generator(seed, "batch", c, it))
            batch = pick[:cfg.batch_size]
            phi = features.draw(seed, c, it, device=backend.device)
            if features.fixed:
                real_blocks = [b[batch.to(b.device)] for b in ref_blocks[c]]
            else:
                with torch.no_grad():
                    real_blocks = phi(refs[c][batch])
            batch_weights = None if weights is None else weights[c][batch.to(weights[c].device)]
            match = sum(mmd2(f, r, cfg.unbiased_mmd, batch_weights)
                        for f, r in zip(phi(fake[slices[c]]), real_blocks))
            loss = loss + match + prior_weight * shell_penalty(z[slices[c]])
            history[c].append(float(match.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_iteration is not None:
            on_iteration()
    return z.detach(), history


def _class_results(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor,
                   slices: dict[int, slice], refs: dict[int, torch.Tensor],
                   history: dict[int, list[float]], cfg: NoptConfig,
                   seed: int) -> list[ClassResult]:
    """Sample the final images from ``z`` and score each class against its whole R_c."""
    images = sample_images(backend, z, labels, cfg, first_step=cfg.first_sampler_step)
    return [ClassResult(c, images[s], history[c],
                        final_match(images[s], refs[c], cfg, seed, c, backend.encode), z[s])
            for c, s in slices.items()]


def _condition_labels(labels_order: list[int], counts: dict[int, int],
                      conditioning: dict[int, int], device) -> torch.Tensor:
    """The prior class each of the batch's rows is generated as, class by class."""
    return torch.cat([torch.full((counts[c],), conditioning.get(c, c), dtype=torch.long)
                      for c in labels_order]).to(device)


def _class_slices(labels_order: list[int], counts: dict[int, int]) -> dict[int, slice]:
    slices, start = {}, 0
    for c in labels_order:
        slices[c] = slice(start, start + counts[c])
        start += counts[c]
    return slices


@torch.no_grad()
def final_match(images: torch.Tensor, reference: torch.Tensor, cfg: NoptConfig, seed: int,
                label: int, encode=None) -> float:
    """MMD^2 of the final images against all of R_c under one fixed feature draw."""
    features = FeatureMap(cfg.feature_map, images.shape[1], encode=encode)
    phi = features.draw(seed, label, "final", device=images.device)
    return float(sum(mmd2(f, r, cfg.unbiased_mmd)
                     for f, r in zip(phi(images), blocks_in_batches(phi, reference))))
