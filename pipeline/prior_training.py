"""Training the tiny class-conditional pixel UNet prior (DDPM) on a labelled dataset (CPU by
default; a GPU where one is named)."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from pipeline.datasets import LabelledImages
from pipeline.errors import DscoError
from pipeline.tensors import to_model_space
from pipeline.prior import save_prior
from pipeline.prior_meta import PriorMeta
from pipeline.seeding import derive_seed


@dataclass(frozen=True)
class PriorTrainingConfig:
    """Hyper-parameters of prior training; the defaults fit digits in a few CPU minutes."""

    steps: int = 2500
    batch_size: int = 128
    learning_rate: float = 2e-3
    label_dropout: float = 0.1  # trains the null class used by classifier-free guidance
    ema_decay: float = 0.999
    channels: tuple[int, ...] = (32, 64)
    train_timesteps: int = 1000
    seed: int = 0


def build_unet(image_size: int, channels: int, num_classes: int,
               widths: tuple[int, ...]) -> UNet2DModel:
    """A small UNet2DModel with class embeddings for ``num_classes`` + 1 (the null class)."""
    return UNet2DModel(
        sample_size=image_size, in_channels=channels, out_channels=channels,
        block_out_channels=widths, layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1),
        attention_head_dim=8, num_class_embeds=num_classes + 1)


def training_device(name: torch.device | str) -> torch.device:
    """The torch device ``name`` names, refused with the fix when this torch cannot use it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DscoError(f"prior training device {name!r} is not a torch device; use cpu, cuda "
                        "or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DscoError(f"prior training was asked to run on {name!r}, but this torch sees no "
                        "CUDA GPU (a CPU-only build, or no GPU on this machine); train on "
                        "--device cpu (a few minutes for digits on 2 cores) or on a GPU machine.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DscoError(f"prior training was asked to run on {name!r}, but this machine has "
                        f"{torch.cuda.device_count()} CUDA GPU(s); name cuda:0 to cuda:N-1.")
    if device.type not in ("cpu", "cuda"):
        raise DscoError(f"prior training runs on cpu or cuda, not {name!r}.")
    return device


def train_prior(data: LabelledImages, out_dir: str, cfg: PriorTrainingConfig,
                progress: bool = True, device: torch.device | str = "cpu") -> str:
    """Train a DDPM prior on ``data`` on ``device`` and save it to ``out_dir``; returns
    ``out_dir``. Batches, noise and timesteps are drawn on the CPU from the config's seed, so
    a GPU sees the same draws (its arithmetic, not its randomness, differs)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DscoError(f"the prior's output {out_dir!r} is a file; a prior is a folder "
                        "(unet/, scheduler/, dsco_prior.json): pass a new folder path.")
    if cfg.steps < 1:
        raise DscoError(f"prior training needs 1 step or more, got steps={cfg.steps}.")
    device = training_device(device)
    torch.manual_seed(derive_seed(cfg.seed, "prior"))
    images = to_model_space(data.images).to(device)
    labels = torch.from_numpy(data.labels).to(device)
    num_classes = len(data.class_names)
    _, channels, size, _ = images.shape
    unet = build_unet(size, channels, num_classes, cfg.channels).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.train_timesteps,
                              beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.learning_rate, cfg.steps,
                                                      pct_start=0.05)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "prior-batches"))
    bar = tqdm(range(cfg.steps), desc="train prior", disable=not progress, mininterval=2)
    for _ in bar:
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen).to(device)
        x0, y = images[idx], labels[idx].clone()
        y[(torch.rand(len(y), generator=gen) < cfg.label_dropout).to(device)] = num_classes
        noise = torch.randn(x0.shape, generator=gen).to(device)
        t = torch.randint(cfg.train_timesteps, (len(x0),), generator=gen).to(device)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t, class_labels=y).sample,
                          noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_schedule.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    meta = PriorMeta(kind="pixel_unet", num_classes=num_classes, null_class=num_classes,
                     image_size=size, channels=channels, class_names=data.class_names)
    save_prior(ema.cpu(), dict(scheduler.config), meta, out_dir)
    return out_dir
