"""The latent backend on CPU with a tiny random-weight DiT + VAE saved in the hub layout: it
loads, decodes to the right size, applies guidance with the null class, NOpt lowers its loss,
and checkpointing keeps activation memory flat in the number of DDIM steps."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.config import NoptConfig
from pipeline.errors import DscoError
from pipeline.latent_prior import LatentDiTBackend
from pipeline.nopt import optimize_classes, sample_images
from pipeline.prior import load_prior
from pipeline.prior_meta import read_prior_meta
from tests.conftest import REPO


def test_a_hub_layout_dit_pipeline_loads_with_metadata_from_its_configs(tiny_dit):
    meta = read_prior_meta(str(tiny_dit))
    assert (meta.kind, meta.num_classes, meta.null_class) == ("dit", 10, 10)
    assert (meta.image_size, meta.channels) == (32, 3)
    backend = load_prior(str(tiny_dit))
    assert isinstance(backend, LatentDiTBackend)
    assert backend.latent_shape == (4, 16, 16) and backend.image_shape == (3, 32, 32)
    images = backend.decode(torch.randn(2, 4, 16, 16))
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert backend.encode(images).shape == (2, 4, 16, 16)


def test_an_incomplete_dit_directory_is_explained(tiny_dit, tmp_path):
    broken = tmp_path / "dit"
    broken.mkdir()
    (broken / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    with pytest.raises(DscoError, match="looks like a DiT pipeline but its configs"):
        read_prior_meta(str(broken))


def test_a_dit_pipeline_with_damaged_weights_is_named(tiny_dit, tmp_path):
    broken = tmp_path / "dit"
    shutil.copytree(tiny_dit, broken)
    weights = next((broken / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(DscoError, match=f"transformer/{weights.name} is .* cut off"):
        read_prior_meta(str(broken))


def test_guidance_mixes_the_class_and_the_null_class_predictions(tiny_dit):
    backend = load_prior(str(tiny_dit))
    x, t, labels = torch.randn(2, 4, 16, 16), torch.tensor([500, 500]), torch.tensor([3, 4])
    cond = backend.predict_noise(x, t, labels, 1.0)
    uncond = backend.predict_noise(x, t, torch.tensor([10, 10]), 1.0)
    guided = backend.predict_noise(x, t, labels, 3.0)
    assert torch.allclose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)
    z = torch.randn(2, 4, 16, 16)
    plain = sample_images(backend, z, labels, NoptConfig(ddim_steps=3))
    steered = sample_images(backend, z, labels, NoptConfig(ddim_steps=3, guidance=3.0))
    assert (plain - steered).abs().max() > 1e-3


@pytest.mark.parametrize("start_fraction", [0.0, 0.5])  # 0.5: from step 1 of 3, in latents
def test_nopt_lowers_its_loss_on_tiny_latents(tiny_dit, start_fraction):
    backend = load_prior(str(tiny_dit))
    gen = torch.Generator().manual_seed(1)
    references = {c: torch.rand(32, 3, 32, 32, generator=gen) * 0.5 + (c - 1) * 0.4
                  for c in (1, 2)}
    # pixels: a fixed objective, so its history shows the optimisation (random_conv redraws)
    cfg = NoptConfig(iterations=12, ddim_steps=3, learning_rate=0.1, feature_map="pixels",
                     start_fraction=start_fraction)
    results = optimize_classes(backend, {1: 4, 2: 4}, references, cfg, seed=0)
    for result in results:
        assert result.images.shape == (4, 3, 32, 32)
        history = result.loss_history
        assert history[-1] < 0.97 * history[0], history


# The sampler's forward + backward through K DDIM steps, for each (K, checkpointing) asked, in
# one fresh process after a warm-up; prints the memory each took: peak RSS (VmHWM) minus the
# RSS just before, with the model loaded and the previous probe's tensors freed.
MEMORY_PROBE = textwrap.dedent("""
    import sys, torch
    from pipeline.ddim import ddim_sample
    from pipeline.prior import load_prior
    torch.set_num_threads(1)
    backend = load_prior(sys.argv[1])
    backend.decode = lambda latents: latents  # the same for any K: leave it out of the probe
    batch = int(sys.argv[2])
    labels = torch.zeros(batch, dtype=torch.long)
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    warm_up = ["1:0", "1:1"]  # unreported: they take the one-time allocations
    for i, probe in enumerate(warm_up + sys.argv[3:]):
        steps, checkpointing = int(probe.split(":")[0]), probe.endswith(":1")
        z = torch.randn((batch,) + backend.latent_shape, requires_grad=True)
        before = status("VmRSS:")
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        images = ddim_sample(backend, z, labels, steps, use_checkpointing=checkpointing)
        images.square().mean().backward()
        if i >= len(warm_up):
            print(status("VmHWM:") - before)
        del z, images
""")


def activation_bytes(model_dir, probes: list[tuple[int, bool]], batch: int = 384) -> list[int]:
    """The probe's memory for each (steps, checkpointing), measured in one process."""
    # glibc would keep freed blocks on its heap (RSS then tracks history, not live tensors);
    # a fixed mmap threshold gives every large tensor its own mapping, returned on free
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    args = [f"{steps}:{int(checkpointing)}" for steps, checkpointing in probes]
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(model_dir), str(batch), *args],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True,
                         timeout=300)
    return [int(line) for line in out.stdout.split()[-len(probes):]]


def test_checkpointing_keeps_activation_memory_flat_in_the_number_of_steps(tiny_dit):
    k = 4
    measured = activation_bytes(tiny_dit, [(k, False), (2 * k, False), (k, True), (2 * k, True)])
    without, with_ckpt = measured[:2], measured[2:]
    # without checkpointing, K more steps hold K more steps' activations: the probe sees that
    assert without[1] - without[0] > 100 * 2 ** 20, without
    # with it, K more steps add only K more latents: memory does not double
    assert with_ckpt[1] < 1.3 * with_ckpt[0], with_ckpt
    assert with_ckpt[1] - with_ckpt[0] < 0.2 * (without[1] - without[0]), (with_ckpt, without)
