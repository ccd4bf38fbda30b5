import os
import shutil

import pytest

from pipeline.config import NoptConfig, load_config
from pipeline.errors import DscoError
from pipeline.datasets import list_input
import pipeline.fingerprint as fingerprints
from pipeline.fingerprint import (file_digest, model_fingerprint, prior_files,
                                  prior_files_difference, run_id)
from pipeline.planning import may_dope
from tests.conftest import REPO

BASE = ["output=out", "model.path=m", "input.url=data"]


def test_shipped_digits_config_loads():
    cfg = load_config(str(REPO / "configs" / "digits.yaml"))
    assert cfg.size.ipc == 10 and cfg.nopt.feature_map == "random_conv"
    assert cfg.input.layout == "webdataset"


def test_set_overrides_nested_keys_with_typed_values():
    cfg = load_config(None, BASE + ["nopt.iterations=7", "nopt.learning_rate=1",
                                    "size.doping_fraction=0.25", "nopt.data_free=true"])
    assert cfg.nopt.iterations == 7
    assert cfg.nopt.learning_rate == 1.0 and isinstance(cfg.nopt.learning_rate, float)
    assert cfg.size.doping_fraction == 0.25 and cfg.nopt.data_free is True


def test_set_output_redirects_the_run():
    assert load_config(None, BASE + ["output=s3://bucket/prefix"]).output == \
        "s3://bucket/prefix"


@pytest.mark.parametrize("override, fragment", [
    ("nopt.iteration=5", "unknown config key 'nopt.iteration'. Did you mean 'nopt.iterations'"),
    ("colour=red", "unknown config key 'colour'"),
    ("nopt.iterations=many", "'nopt.iterations' must be int"),
    ("nopt.iterations=-1", "nopt.iterations must be >= 0"),
    ("nopt.init=kmeans", "nopt.init 'kmeans' is unknown"),
    ("input.layout=tar", "input.layout 'tar' is unknown; use one of ['webdataset', 'folders']"),
    ("nopt.init_space=pixels", "nopt.init_space 'pixels' is unknown"),
    ("nopt.mmd_estimator=u", "nopt.mmd_estimator 'u' is unknown"),
    ("nopt.start_fit_steps=-3", "nopt.start_fit_steps must be >= 0, got -3"),
    ("nopt.start_fraction=1", "nopt.start_fraction must be in [0, 1) (the share of the sampler's "
     "steps the inverted start skips), got 1"),
    ("nopt.start_fraction=-0.5", "nopt.start_fraction must be in [0, 1)"),
    ("nopt.start_fraction=0.99999999999", "nopt.start_fraction 0.99999999999 of 10 DDIM steps "
     "leaves no sampler step"),
    ("nopt.reweight_beta=-0.5", "nopt.reweight_beta must be >= 0 (0 turns the reweighted "
     "second pass off), got -0.5"),
    ("nopt.reweight_iterations=-2", "nopt.reweight_iterations must be >= 0, got -2"),
    ("nopt.learning_rate=.inf", "config key 'nopt.learning_rate' must be a finite number"),
    ("execution.lease_seconds=nan", "config key 'execution.lease_seconds' must be a finite"),
    ("doping.selector=best", "doping.selector 'best' is unknown"),
    ("doping.boundary_weight=-1", "doping.boundary_weight must be a number >= 0"),
    ("doping.boundary_weight=.inf", "'doping.boundary_weight' must be a finite number"),
    ("size.fraction=0.5", "set exactly one of size.ipc and size.fraction (got ipc=10, "
     "fraction=0.5); for a fraction, clear the IPC (it defaults to 10) with --set size.ipc=null"),
    ("size.ipc=null", "(got ipc=None, fraction=None); set one, e.g. --set size.ipc=10."),
    ("nopt=3", "config section 'nopt' must be a mapping"),
    ("noequals", "must look like key=value"),
])
def test_bad_values_are_named(override, fragment):
    with pytest.raises(DscoError, match=None) as info:
        load_config(None, BASE + [override])
    assert fragment in str(info.value)


def test_missing_output_and_model_are_explained():
    with pytest.raises(DscoError, match="'output' is empty"):
        load_config(None, ["model.path=m", "input.url=d"])
    load_config(None, ["output=o", "input.url=d"])  # a selection of real images only
    with pytest.raises(DscoError, match="'model.path' is empty, but a data-free job"):
        load_config(None, ["output=o", "nopt.data_free=true"])
    with pytest.raises(DscoError, match="model.class_map .* but model.path is empty"):
        load_config(None, ["output=o", "input.url=d", "model.class_map=[0, 1]"])


def test_data_free_needs_no_input_but_doping_does():
    load_config(None, ["output=o", "model.path=m", "nopt.data_free=true"])
    with pytest.raises(DscoError, match="input.url"):
        load_config(None, ["output=o", "model.path=m", "nopt.data_free=true",
                           "size.doping_fraction=0.5"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DscoError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(DscoError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(DscoError, match="is a folder or not a text file"):
        load_config(str(tmp_path))  # the data folder passed where the config goes
    (tmp_path / "shard.tar").write_bytes(b"\x89PNG\xff\xfe")
    with pytest.raises(DscoError, match="is a folder or not a text file"):
        load_config(str(tmp_path / "shard.tar"))


@pytest.mark.parametrize("size, dopes", [
    (["size.ipc=10"], False),  # IPC at or under the crossover: all synthetic
    (["size.ipc=50"], True),  # over the crossover: real only
    (["size.ipc=10", "size.doping_fraction=0.5"], True),
    (["size.ipc=50", "size.synthetic_cap=50"], False),
    (["size.ipc=null", "size.fraction=0.2"], True),  # depends on class sizes: assume so
    (["size.ipc=50", "nopt.data_free=true"], False),  # pure data-free has no real samples
])
def test_doping_settings_are_in_the_run_id_only_when_the_run_can_dope(size, dopes):
    def run_id_with(selector):
        cfg = load_config(None, [*BASE, *size,
                                 f"doping.selector={selector}"])
        return run_id(cfg, [], [])

    assert may_dope(load_config(None, [*BASE, *size])) \
        == dopes
    assert (run_id_with("mmd") != run_id_with("herding")) == dopes


def test_the_biased_mmd_estimator_keeps_the_run_id_of_runs_made_before_the_setting():
    cfg = load_config(None, [*BASE, "size.ipc=10", "nopt.mmd_estimator=biased",
                             "nopt.init_space=latent", "nopt.start_fraction=0",
                             "nopt.reweight_beta=0"])  # the old values
    assert run_id(cfg, [], []) == "deb7952979c9b8a6"  # this config's id before the settings
    default = load_config(None, [*BASE, "size.ipc=10"])
    assert default.nopt.mmd_estimator == "unbiased"
    assert run_id(default, [], []) != run_id(cfg, [], [])


def test_the_latent_init_space_keeps_the_run_id_of_runs_made_before_the_setting():
    def run_id_with(*overrides):
        return run_id(load_config(None, [*BASE, "size.ipc=10", *overrides]), [], [])

    before = run_id_with("nopt.mmd_estimator=biased", "nopt.init_space=latent",
                         "nopt.start_fraction=0", "nopt.reweight_beta=0")
    assert before == "deb7952979c9b8a6"  # as in the test above: the id before both settings
    assert load_config(None, BASE).nopt.init_space == "random_conv"
    assert run_id_with("nopt.mmd_estimator=biased", "nopt.start_fraction=0",
                       "nopt.reweight_beta=0") != before


@pytest.mark.parametrize("selector, matters", [("random", False), ("kcenter", True)])
def test_the_doping_encoder_is_in_the_run_id_only_for_selectors_that_read_it(selector,
                                                                             matters):
    def run_id_with(encoder):
        return run_id(load_config(None, [*BASE, "size.ipc=50", f"doping.selector={selector}",
                                         f"doping.encoder={encoder}",
                                         "nopt.start_fraction=0"]), [], [])

    assert (run_id_with("random_conv") != run_id_with("trained_convnet")) == matters
    if selector == "random":  # random real runs made before the trained psi keep their id
        assert run_id_with("trained_convnet") == run_id_with("random_conv") == "92d1c4feeffd0ad4"


@pytest.mark.parametrize("overrides, matters", [
    (["nopt.reweight_beta=0.5"], True),
    (["nopt.reweight_beta=0"], False),  # off: the id of the runs made before the setting
    (["nopt.reweight_beta=0.5", "nopt.data_free=true"], False),  # no real references
    (["nopt.reweight_beta=0.5", "nopt.iterations=0"], False),  # plain sampling
    (["size.doping_fraction=1.0"], False),  # real images only (random real, herding, ...)
    (["size.ipc=50"], False),  # past the crossover: doping only
    (["size.ipc=null", "size.fraction=0.2"], True),  # unsure before the classes are counted
])
def test_the_second_pass_settings_are_in_the_run_id_only_where_the_pass_runs(overrides, matters):
    def run_id_with(iterations):
        return run_id(load_config(None, [*BASE, "size.ipc=10", *overrides,
                                         f"nopt.reweight_iterations={iterations}"]), [], [])

    assert (run_id_with(50) != run_id_with(20)) == matters
    switched_off = [o for o in overrides if "reweight_beta" not in o]
    off = run_id(load_config(None, [*BASE, "size.ipc=10", *switched_off,
                                    "nopt.reweight_beta=0"]), [], [])
    assert (run_id_with(50) != off) == matters


@pytest.mark.parametrize("overrides, matters", [
    (["size.ipc=10"], True),
    (["size.ipc=10", "nopt.data_free=true"], True),  # herds the model's own samples
    (["size.ipc=50", "nopt.data_free=true"], True),  # over the crossover, yet all synthetic
    (["size.ipc=null", "size.fraction=0.2"], True),  # depends on class sizes: assume so
    (["size.ipc=10", "nopt.iterations=0"], False),  # plain sampling starts from noise
    (["size.ipc=10", "nopt.init=noise"], False),
    # all real by the plan, but a class smaller than its budget is filled with synthetic
    (["size.ipc=10", "size.doping_fraction=1.0"], True),
    (["size.ipc=50"], True),
])
@pytest.mark.parametrize("setting, values", [
    ("init_space", ("random_conv", "latent")), ("start_fit_steps", (0, 20)),
    ("start_fraction", (0.0, 0.3))])
def test_the_start_settings_are_in_the_run_id_only_where_they_can_change_the_output(
        overrides, matters, setting, values):
    def run_id_with(value):
        return run_id(load_config(None, [*BASE, *overrides, f"nopt.{setting}={value}"]), [], [])

    assert (run_id_with(values[0]) != run_id_with(values[1])) == matters


def test_the_boundary_lean_is_in_the_run_id_only_for_the_mmd_selector():
    def run_id_with(*overrides):
        return run_id(load_config(None, [*BASE, "size.ipc=50", *overrides]), [], [])

    assert run_id_with("doping.selector=mmd", "doping.boundary_weight=0") \
        != run_id_with("doping.selector=mmd", "doping.boundary_weight=1")
    assert run_id_with("doping.selector=kcenter", "doping.boundary_weight=0") \
        == run_id_with("doping.selector=kcenter", "doping.boundary_weight=1")


@pytest.mark.parametrize("fraction, steps, init, first", [
    (0.5, 10, "inverted", 5), (0.5, 5, "inverted", 2), (0.29, 100, "inverted", 29),
    (0.0, 10, "inverted", 0), (0.5, 10, "noise", 0)])
def test_the_start_fraction_names_a_whole_sampler_step(fraction, steps, init, first):
    cfg = NoptConfig(start_fraction=fraction, ddim_steps=steps, init=init)
    assert cfg.first_sampler_step == first


def test_nopts_thread_count_is_in_the_run_id_and_the_actor_count_is_not():
    def run_id_with(*overrides):
        return run_id(load_config(None, [*BASE, *overrides]), [], [])

    default = run_id_with()
    assert run_id_with("execution.actors=5") == default
    # two threads change the last bits of NOpt's images on CPUs: a run of them is another run
    assert run_id_with("execution.cpus_per_actor=2") != default
    assert run_id_with("execution.accelerator=gpu", "execution.cpus_per_actor=2") == \
        run_id_with("execution.accelerator=gpu")


def test_a_trailing_slash_on_the_input_or_the_prior_keeps_the_run_id():
    def run_id_of(*overrides):
        return run_id(load_config(None, ["output=out", *overrides]), [], [])

    base = run_id_of("model.path=/m/prior", "input.url=s3://bucket/train")
    assert run_id_of("model.path=/m/prior/", "input.url=s3://bucket/train//") == base
    assert run_id_of("model.path=/m/prior", "input.url=s3://bucket/other") != base
    # a bucket's root keeps its scheme's slashes
    assert run_id_of("model.path=/m/prior", "input.url=s3://bucket/") == \
        run_id_of("model.path=/m/prior", "input.url=s3://bucket")


def test_exponents_read_as_numbers():
    # YAML 1.1 (PyYAML) reads 1e-3 as a string: "must be float, got '1e-3'" was the answer
    assert load_config(None, [*BASE, "nopt.learning_rate=1e-3"]).nopt.learning_rate == 0.001


def test_a_run_made_while_the_trailing_slash_was_in_the_id_is_still_found(tiny_prior,
                                                                          digits_dir, tmp_path):
    from cluster.driver import fingerprint

    def config(data):
        return load_config(None, [f"output={tmp_path}", f"model.path={tiny_prior}",
                                  f"input.url={data}"])

    slashed = config(f"{digits_dir / 'train'}/")
    canonical = fingerprint(config(digits_dir / "train"))
    assert fingerprint(slashed) == canonical
    as_spelled = run_id(slashed, list_input(slashed.input.url, "webdataset"),
                        model_fingerprint(prior_files(str(tiny_prior)), ""), canonical_urls=False)
    assert as_spelled != canonical
    (tmp_path / as_spelled).mkdir()
    (tmp_path / as_spelled / "run_config.json").write_text("{}")  # that run, made before
    assert fingerprint(slashed) == as_spelled  # resumed (or up to date), not redone
    (tmp_path / canonical).mkdir()
    (tmp_path / canonical / "run_config.json").write_text("{}")
    assert fingerprint(slashed) == canonical  # once a run has the new id, it is the one


def test_a_prior_copy_is_checked_by_content_even_past_the_hash_limit(tmp_path, monkeypatch):
    # the run_id hashes large files by mtime, which differs between copies; the actors' check
    # hashes both ends of them instead, where weights retrained in place differ too
    monkeypatch.setattr(fingerprints, "HASH_CONTENT_LIMIT", 64)
    monkeypatch.setattr(fingerprints, "DIGEST_EDGE", 16)
    prior = tmp_path / "prior"
    (prior / "unet").mkdir(parents=True)
    (prior / "unet" / "weights.bin").write_bytes(bytes(range(100)))
    (prior / "config.json").write_text("{}")
    started = prior_files(str(prior), file_digest)
    assert prior_files_difference(str(prior), started) == ""
    copy = tmp_path / "copy"
    shutil.copytree(prior, copy)
    os.utime(copy / "unet" / "weights.bin", (0, 0))
    assert prior_files(str(copy)) != prior_files(str(prior))  # the run_id's rows: the mtime
    assert prior_files_difference(str(copy), started) == ""  # the same prior
    (copy / "unet" / "weights.bin").write_bytes(bytes([1]) + bytes(range(1, 100)))
    assert "unet/weights.bin has other contents" in prior_files_difference(str(copy), started)
    (copy / "unet" / "weights.bin").unlink()
    assert prior_files_difference(str(copy), started) == "unet/weights.bin is missing"
    assert prior_files_difference(str(tmp_path / "nowhere"), started) == \
        "there is no folder there"
