"""Input classes against the prior's: the checks before a run and model.class_map."""
import pytest
import torch

from pipeline.class_mapping import (check_class_names_align, check_guidance, check_prior_fits,
                                    data_free_classes)
from pipeline.config import NoptConfig, load_config
from pipeline.errors import DscoError
from pipeline.nopt import initial_noise, optimize_classes, sample_images
from pipeline.prior import load_prior
from pipeline.prior_meta import PriorMeta

META = PriorMeta("dit", 1000, 1000, 256, 3, [f"c{i}" for i in range(1000)])


def cfg(*extra):
    return load_config(None, ["output=o", "model.path=m", "input.url=i", *extra])


def test_input_classes_named_like_the_priors_at_other_positions_are_refused():
    digits = PriorMeta("pixel_unet", 10, 10, 8, 1, [str(i) for i in range(10)])
    check_class_names_align(cfg(), digits, ["0", "1", "2"])  # the first three: aligned
    check_class_names_align(cfg(), digits, ["cat", "dog"])  # other names: nothing to compare
    check_class_names_align(cfg("model.class_map=[0, 2]"), digits, ["0", "2"])
    # folder 1 had no images, so folder 2 became class 1 and would be generated as a 1
    with pytest.raises(DscoError, match=r"input class 1 is '2', but the prior .* calls its "
                                        r"class 1 '1' .* set model.class_map: \[0, 2\]"):
        check_class_names_align(cfg(), digits, ["0", "2"])
    with pytest.raises(DscoError, match=r"model.class_map: \[0, 1, 10, 2\]"):  # text order
        check_class_names_align(cfg(), PriorMeta("pixel_unet", 11, 11, 8, 1,
                                                 [str(i) for i in range(11)]),
                                ["0", "1", "10", "2"])


def test_a_prior_of_another_kind_is_refused():
    with pytest.raises(DscoError, match="model.kind is 'pixel_unet' but 'm' holds a 'dit'"):
        check_prior_fits(cfg("model.kind=pixel_unet"), META, 1000)
    check_prior_fits(cfg("model.kind=dit"), META, 1000)


def test_guidance_needs_a_null_class_and_is_refused_before_the_run_without_one():
    no_null = PriorMeta("pixel_unet", 10, None, 8, 1, [str(i) for i in range(10)])
    check_guidance(cfg(), no_null)
    with pytest.raises(DscoError, match="nopt.guidance=2.0 needs a prior with a null class"):
        check_guidance(cfg("nopt.guidance=2"), no_null)


def test_the_input_must_have_the_configured_class_count():
    with pytest.raises(DscoError, match="input.num_classes is 1000 but 'i' has 999"):
        check_prior_fits(cfg("input.num_classes=1000"), META, 999)


def test_class_map_entries_must_match_the_input_and_exist_in_the_prior():
    with pytest.raises(DscoError, match="has 2 entries but the input has 3"):
        check_prior_fits(cfg("model.class_map=[1, 2]"), META, 3)
    with pytest.raises(DscoError, match=r"classes \[1000\] that the prior"):
        check_prior_fits(cfg("model.class_map=[1, 1000]"), META, 2)
    with pytest.raises(DscoError, match="knows 1000; train the prior"):
        check_prior_fits(cfg(), META, 1001)
    assert data_free_classes(cfg("model.class_map=[7, 3]"), META) == ["c7", "c3"]


def test_a_mapped_class_is_generated_as_its_prior_class_from_its_own_noise(tiny_prior):
    backend = load_prior(str(tiny_prior))
    plain = NoptConfig(iterations=0, ddim_steps=3)
    [result] = optimize_classes(backend, {0: 2}, {0: torch.zeros(4, 1, 8, 8)}, plain, seed=0,
                                conditioning={0: 5})
    expected = sample_images(backend, initial_noise(backend, 0, 0, 2),
                             torch.tensor([5, 5]), plain)
    assert torch.allclose(result.images, expected)
    [unmapped] = optimize_classes(backend, {0: 2}, {0: torch.zeros(4, 1, 8, 8)}, plain, seed=0)
    assert not torch.allclose(unmapped.images, expected)
