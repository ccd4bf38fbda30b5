import json

import pytest
import torch

from pipeline.ddim import ddim_sample
from pipeline.errors import DscoError
from pipeline.latent_prior import LatentDiTBackend
from pipeline.prior import load_prior
from pipeline.prior_meta import PRIOR_META, read_prior_meta
from tests.conftest import make_tiny_prior


def test_saved_prior_loads_with_its_metadata(tiny_prior):
    backend = load_prior(str(tiny_prior))
    assert backend.latent_shape == (1, 8, 8)
    assert backend.meta.null_class == 10 and backend.meta.num_classes == 10
    assert (tiny_prior / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_guidance_mixes_conditional_and_null_predictions(tiny_prior):
    backend = load_prior(str(tiny_prior))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([500, 500])
    labels = torch.tensor([3, 4])
    cond = backend.predict_noise(x, t, labels, 1.0)
    uncond = backend.predict_noise(x, t, torch.tensor([10, 10]), 1.0)
    guided = backend.predict_noise(x, t, labels, 2.0)
    assert torch.allclose(guided, uncond + 2.0 * (cond - uncond), atol=1e-5)


def test_guidance_without_null_class_is_refused(tmp_path):
    path = make_tiny_prior(tmp_path / "p")
    meta = json.loads((path / PRIOR_META).read_text())
    meta["null_class"] = None
    (path / PRIOR_META).write_text(json.dumps(meta))
    backend = load_prior(str(path))
    with pytest.raises(DscoError, match="null class"):
        backend.predict_noise(torch.randn(1, 1, 8, 8), torch.tensor([1]), torch.tensor([0]), 2.0)


def test_missing_or_broken_prior_is_explained(tmp_path):
    with pytest.raises(DscoError, match="neither a DsCo prior directory"):
        load_prior(str(tmp_path))
    path = make_tiny_prior(tmp_path / "p")
    (path / "unet" / "config.json").write_text("{}")  # readable, but not this UNet's config
    with pytest.raises(DscoError, match="could not load"):
        load_prior(str(path))


def test_a_prior_copied_in_part_is_named_before_any_model_loads(tmp_path):
    path = make_tiny_prior(tmp_path / "p")
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:len(intact) // 2])  # an interrupted copy
    with pytest.raises(DscoError, match="unet/diffusion_pytorch_model.safetensors is .* bytes "
                                        "where its header needs .*: cut off"):
        read_prior_meta(str(path))
    weights.unlink()
    (path / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(DscoError, match=r"incomplete: scheduler/scheduler_config.json is missing; "
                                        r"unet/ has no weights file"):
        read_prior_meta(str(path))
    (path / PRIOR_META).write_text('{"kind": "pixel_unet", "num_cl')
    with pytest.raises(DscoError, match="dsco_prior.json does not read as a DsCo prior"):
        read_prior_meta(str(path))


def test_ddim_gradients_reach_the_noise_and_checkpointing_changes_nothing(tiny_prior):
    backend = load_prior(str(tiny_prior))
    labels = torch.tensor([1, 2])
    grads, outs = [], []
    for use_ckpt in (True, False):
        z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        z.requires_grad_(True)
        out = ddim_sample(backend, z, labels, steps=4, use_checkpointing=use_ckpt)
        out.pow(2).sum().backward()
        grads.append(z.grad.clone())
        outs.append(out.detach())
    assert grads[0].abs().sum() > 0
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_pixel_unet_runs_in_fp32_on_a_gpu_and_the_dit_in_bf16(tiny_prior):
    """Autocast policy per backend (benchmarks/results/gpu_digits.json: the small pixel UNet
    is faster in fp32 on an H100, the DiT in bf16); only ``uses_bf16`` reads the device."""
    backend = load_prior(str(tiny_prior))
    assert not backend.uses_bf16()  # CPU
    backend.device = torch.device("cuda")
    assert not backend.uses_bf16()
    backend.mixed_precision = True
    assert backend.uses_bf16()
    assert LatentDiTBackend.mixed_precision
