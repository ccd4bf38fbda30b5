"""Deterministic DDIM sampling (eta = 0) that gradients can flow through, and its inversion;
both can stop at (or start from) an intermediate step of the schedule.

Each denoising step (and the decode, for latent models) is wrapped in activation
checkpointing, so the memory held for the backward pass is one step's activations plus the K
intermediate samples, flat in K.
"""
from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from pipeline.prior import DiffusionBackend


def _ddim_step(backend: DiffusionBackend, x: torch.Tensor, t: torch.Tensor,
               labels: torch.Tensor, guidance: float) -> torch.Tensor:
    eps = backend.predict_noise(x, t.expand(x.shape[0]), labels, guidance)
    return backend.scheduler.step(eps, t, x, eta=0.0).prev_sample


def _run_steps(backend: DiffusionBackend, x: torch.Tensor, labels: torch.Tensor,
               timesteps: torch.Tensor, guidance: float, use_checkpointing: bool) -> torch.Tensor:
    for t in timesteps:
        if use_checkpointing and torch.is_grad_enabled() and x.requires_grad:
            x = checkpoint(_ddim_step, backend, x, t, labels, guidance, use_reentrant=False)
        else:
            x = _ddim_step(backend, x, t, labels, guidance)
    return x


def ddim_sample(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor, steps: int,
                guidance: float = 1.0, use_checkpointing: bool = True,
                first_step: int = 0) -> torch.Tensor:
    """Run DDIM steps ``first_step``..``steps - 1`` of a ``steps``-step schedule from ``z``
    for class ``labels``; return images in [-1, 1]. ``z`` is pure noise at ``first_step`` 0,
    else the point the sampler reaches after ``first_step`` steps (see :func:`ddim_advance`).

    Differentiable with respect to ``z`` when ``z.requires_grad``; the result is not clamped,
    so gradients do not vanish at the pixel range edges (clamp when exporting images).
    """
    backend.scheduler.set_timesteps(steps, device=z.device)
    x = _run_steps(backend, z, labels, backend.scheduler.timesteps[first_step:], guidance,
                   use_checkpointing)
    if use_checkpointing and torch.is_grad_enabled() and x.requires_grad:
        return checkpoint(backend.decode, x, use_reentrant=False)  # a VAE decoder is heavy
    return backend.decode(x)


@torch.no_grad()
def ddim_advance(backend: DiffusionBackend, z: torch.Tensor, labels: torch.Tensor, steps: int,
                 until_step: int, guidance: float = 1.0) -> torch.Tensor:
    """The first ``until_step`` DDIM steps of a ``steps``-step schedule from noise ``z``, not
    decoded: the point :func:`ddim_sample` with ``first_step=until_step`` continues from."""
    backend.scheduler.set_timesteps(steps, device=z.device)
    return _run_steps(backend, z, labels, backend.scheduler.timesteps[:until_step], guidance,
                      use_checkpointing=False)


@torch.no_grad()
def ddim_invert(backend: DiffusionBackend, latents: torch.Tensor, labels: torch.Tensor,
                steps: int, until_step: int = 0) -> torch.Tensor:
    """The point that DDIM steps ``until_step``..``steps - 1`` map (approximately) back to
    ``latents``: the noise itself at ``until_step`` 0.

    Runs the sampler's timesteps in reverse, predicting the noise at each step from the current
    point (the usual first-order DDIM inversion), conditioned on ``labels`` without guidance.
    """
    scheduler = backend.scheduler
    scheduler.set_timesteps(steps, device=latents.device)
    alphas = scheduler.alphas_cumprod.to(latents.device)
    alpha_prev = scheduler.final_alpha_cumprod.to(latents.device)  # where sampling ends
    x = latents
    for t in scheduler.timesteps[until_step:].flip(0):
        alpha = alphas[int(t)]
        eps = backend.predict_noise(x, t.expand(x.shape[0]), labels, 1.0)
        clean = (x - (1 - alpha_prev).sqrt() * eps) / alpha_prev.sqrt()
        x = alpha.sqrt() * clean + (1 - alpha).sqrt() * eps
        alpha_prev = alpha
    return x
