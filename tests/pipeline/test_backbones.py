"""pretrained:<path> feature maps: ResNets in the transformers and torchvision layouts load into
the project's module and compute what transformers' own ResNet computes; unsafe or wrong files
are refused; NOpt runs with pretrained and latent feature maps."""
import math
import pickle
import re

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, ResNetModel

from pipeline.backbones import IMAGENET_MEAN, IMAGENET_STD, ResNet, load_resnet
from pipeline.config import NoptConfig, load_config
from pipeline.errors import DscoError
from pipeline.nopt import optimize_classes
from pipeline.prior import load_prior
from pipeline.prior_meta import weights_file_problem
from pipeline.resnet_names import resnet_shapes

RESNET18 = dict(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic")
RESNET50 = dict(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048],
                layer_type="bottleneck")


def hf_resnet(shape: dict, classifier: bool = False):
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=64, num_labels=10, **shape)
    model = (ResNetForImageClassification if classifier else ResNetModel)(config).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so the test sees them used
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model


def hf_blocks(model, images: torch.Tensor) -> list[torch.Tensor]:
    """transformers' stage outputs, pooled, for images in [-1, 1] at 224 px."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    resnet = model.resnet if hasattr(model, "resnet") else model
    hidden = resnet((((images + 1) / 2) - mean) / std, output_hidden_states=True).hidden_states
    return [h.mean(dim=(2, 3)) for h in hidden[1:]]


@pytest.mark.parametrize("shape,classifier", [(RESNET18, False), (RESNET50, True)])
def test_transformers_layout_loads_and_matches_transformers(tmp_path, shape, classifier):
    model = hf_resnet(shape, classifier)
    model.save_pretrained(tmp_path, safe_serialization=True)
    ours = load_resnet(str(tmp_path / "model.safetensors"))
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        for mine, theirs in zip(ours(images), hf_blocks(model, images)):
            assert mine.shape == theirs.shape
            assert torch.allclose(mine, theirs, atol=1e-4)


def test_torchvision_layout_weights_only_files_load_and_pickles_are_refused(tmp_path):
    ours = load_resnet(_saved_hf18(tmp_path))
    torch.save(ours.state_dict(), tmp_path / "resnet18.pth")  # torchvision's names
    again = load_resnet(str(tmp_path / "resnet18.pth"))
    images = torch.rand(1, 3, 40, 40) * 2 - 1
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(ours(images), again(images)))
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(DscoError, match="weights-only"):
        load_resnet(str(tmp_path / "evil.pt"))
    with pytest.raises(DscoError, match="do not exist"):
        load_resnet(str(tmp_path / "missing.safetensors"))


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def _saved_hf18(tmp_path) -> str:
    hf_resnet(RESNET18).save_pretrained(tmp_path / "hf", safe_serialization=True)
    return str(tmp_path / "hf" / "model.safetensors")


def test_nopt_runs_with_a_pretrained_feature_map(tmp_path, tiny_prior):
    weights = _saved_hf18(tmp_path)
    backend = load_prior(str(tiny_prior))  # 1-channel 8x8: expanded to RGB, resized to 224
    refs = {3: torch.rand(16, 1, 8, 8) * 2 - 1}
    cfg = NoptConfig(iterations=2, ddim_steps=2, feature_map=f"pretrained:{weights}")
    [result] = optimize_classes(backend, {3: 4}, refs, cfg, seed=0)
    # (the unbiased MMD^2 can dip below 0, and past k = 0 no shell penalty is added to it)
    assert len(result.loss_history) == 2 and math.isfinite(result.final_loss)
    assert result.images.shape == (4, 1, 8, 8)


def test_nopt_runs_with_the_latent_feature_map(tiny_dit):
    backend = load_prior(str(tiny_dit))
    refs = {0: torch.rand(8, 3, 32, 32) * 2 - 1}
    cfg = NoptConfig(iterations=2, ddim_steps=2, feature_map="latent")
    [result] = optimize_classes(backend, {0: 2}, refs, cfg, seed=0)
    assert len(result.loss_history) == 2


def test_feature_map_names_are_checked_with_the_config():
    with pytest.raises(DscoError, match="nopt.feature_map 'resnet' is unknown"):
        load_config(None, ["output=x", "model.path=m", "input.url=i", "nopt.feature_map=resnet"])
    with pytest.raises(DscoError, match="doping.encoder 'latent' is unknown"):
        load_config(None, ["output=x", "model.path=m", "input.url=i", "doping.encoder=latent"])


def test_the_run_id_follows_the_pretrained_weights_and_missing_weights_are_explained(
        tmp_path, tiny_prior, digits_dir):
    from cluster.driver import fingerprint

    weights = _saved_hf18(tmp_path)

    def run_id():
        return fingerprint(load_config(None, [
            "output=o", f"model.path={tiny_prior}", f"input.url={digits_dir / 'train'}",
            f"nopt.feature_map=pretrained:{weights}"]))

    before = run_id()
    hf_resnet(RESNET18).save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert run_id() == before  # same bytes, same id
    model = hf_resnet(RESNET18)
    with torch.no_grad():
        model.embedder.embedder.convolution.weight.add_(1.0)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    assert run_id() != before
    weights_file = tmp_path / "hf" / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:-100])  # a copy cut short
    with pytest.raises(DscoError, match="model.safetensors' .* is .* bytes where its header "
                                        "needs .*: cut off or damaged"):
        run_id()  # found by the driver, not after every actor's retries
    from safetensors.torch import save_file

    save_file({"not_a_resnet": torch.zeros(3)}, str(weights_file))  # whole, but no ResNet
    with pytest.raises(DscoError, match="model.safetensors' .* hold no ResNet-18/34/50"):
        run_id()
    weights_file.unlink()
    with pytest.raises(DscoError, match="does not exist here"):
        run_id()


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_the_torch_free_shape_table_is_the_resnets_own(depth):
    model_shapes = {name: tuple(t.shape) for name, t in ResNet(depth).state_dict().items()
                    if name not in ("mean", "std") and "num_batches_tracked" not in name}
    assert resnet_shapes(depth) == model_shapes


def test_resnet_names_with_other_widths_are_refused_before_the_run_and_when_loaded(tmp_path):
    from safetensors.torch import save_file

    state = ResNet(18).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(256, 64, 3, 3)  # a wide variant's block
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "wide.safetensors"))
    torch.save(state, tmp_path / "wide.pth")
    expected = r"hold layer2.0.conv1.weight of shape \[256, 64, 3, 3\] where ResNet-18 has " \
        r"\[128, 64, 3, 3\]"
    assert re.search(expected, weights_file_problem(str(tmp_path / "wide.safetensors")))
    for name in ("wide.safetensors", "wide.pth"):  # the actors' check, for torch files too
        with pytest.raises(DscoError, match=expected):
            load_resnet(str(tmp_path / name))


def test_new_weights_at_the_same_path_embed_anew(tmp_path):
    from pipeline.cache_names import embedding_tag

    weights = tmp_path / "resnet.safetensors"
    weights.write_bytes(b"weights A")
    encoder = f"pretrained:{weights}"
    before = embedding_tag([], encoder, 0)
    weights.write_bytes(b"weights B")  # the run_id changes with them, so must the cache
    assert embedding_tag([], encoder, 0) != before
    # other encoders keep the tags their caches were written under
    assert embedding_tag([], "random_conv", 0) == "39767bdb707ce8d3"
