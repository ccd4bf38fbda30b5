"""The job end to end on a local Ray: layout, up-to-date reruns, data-free, failures, resume,
and shards read back with webdataset and Ray Data."""
import json
import shutil
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch

import pipeline.class_store as class_store
from cluster.driver import input_listing, run_job
from pipeline.class_store import InMemoryStore
from pipeline.config import DopingConfig, load_config
from pipeline.errors import DscoError, JobFailed
from pipeline.evaluation import TrainRecipe
from pipeline.reader import read_index, samples_in_tar
from pipeline.storage import join
from pipeline.trained_encoder import train_features
from tests.conftest import RANDOM_PSI, make_tiny_prior, s3_bucket

pytestmark = pytest.mark.ray
FAST = ["nopt.iterations=2", "nopt.ddim_steps=2", "nopt.batch_size=32", "size.ipc=2",
        "execution.classes_per_unit=3", "write.shard_size=7", RANDOM_PSI,
        # the second pass has its own tests below (its nets train for ~30 s a job)
        "nopt.reweight_beta=0"]


def job(out, prior, digits_dir, *extra):
    return load_config(None, [f"output={out}", f"model.path={prior}",
                              f"input.url={digits_dir / 'train'}", *FAST, *extra])


def shard_contents(run_dir: Path) -> dict[str, dict]:
    """key -> {ext: bytes} for every sample of every committed shard."""
    out = {}
    for entry in read_index(str(run_dir))["shards"]:
        for sample in samples_in_tar((run_dir / entry["name"]).read_bytes()):
            out[sample.pop("__key__")] = sample
    return out


@pytest.fixture(scope="module")
def doped_run(ray_local, tiny_prior, digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = job(out, tiny_prior, digits_dir, "size.doping_fraction=0.5")
    return cfg, run_job(cfg, progress=False)


def test_run_writes_the_design_layout(doped_run):
    cfg, result = doped_run
    run_dir = Path(result.run_url)
    index = read_index(result.run_url)
    assert result.status == "complete" and index["complete"]
    assert index["samples"] == 20 and result.metrics["synthetic"] == 10
    assert len(index["shards"]) == 4  # units of 3+3+3+1 classes, <= 6 samples: 1 shard each
    for name in ("run_config.json", "samples.parquet", "report/metrics.json",
                 "report/report.md", "report/grid.png", "indexes/000001.json"):
        assert (run_dir / name).is_file(), name
    samples = shard_contents(run_dir)
    assert sum(json.loads(s["json"])["source"] == "real" for s in samples.values()) == 10
    latest = json.loads((Path(cfg.output) / "latest.json").read_text())
    assert latest["run_id"] == result.run_id == run_dir.name


def test_same_config_again_is_up_to_date(doped_run):
    cfg, result = doped_run
    again = run_job(cfg, progress=False)
    assert again.status == "up to date" and again.run_id == result.run_id


def test_a_rerun_moves_latest_json_that_a_crash_left_behind(ray_local, tiny_prior, digits_dir,
                                                            tmp_path):
    first = run_job(job(tmp_path, tiny_prior, digits_dir, "seed=1"), progress=False)
    cfg = job(tmp_path, tiny_prior, digits_dir, "seed=2")
    second = run_job(cfg, progress=False)
    latest = tmp_path / "latest.json"

    def latest_run() -> str:
        return json.loads(latest.read_text())["run_id"]

    # a driver killed after marking its run complete, before moving latest.json
    for crashed in (lambda: latest.unlink(),
                    lambda: latest.write_text(json.dumps({"run_id": first.run_id}))):
        crashed()
        assert run_job(cfg, progress=False).status == "up to date"
        assert latest_run() == second.run_id
    assert not (tmp_path / "lock.json").exists()
    # an older complete run, rerun, leaves latest.json on the newer one
    assert run_job(job(tmp_path, tiny_prior, digits_dir, "seed=1"), progress=False).status == \
        "up to date"
    assert latest_run() == second.run_id


def test_shards_read_back_with_webdataset_and_ray_data(doped_run, ray_local):
    import ray.data
    import webdataset as wds

    _, result = doped_run
    run_dir = Path(result.run_url)
    expected = shard_contents(run_dir)
    urls = [str(run_dir / e["name"]) for e in read_index(result.run_url)["shards"]]
    via_wds = {s["__key__"]: {k: v for k, v in s.items() if not k.startswith("__")}
               for s in wds.WebDataset(urls, shardshuffle=False)}
    assert via_wds == expected
    rows = ray.data.read_webdataset(urls, decoder=None).take_all()
    via_ray = {r["__key__"]: {k: r[k] for k in ("png", "cls", "json")} for r in rows}
    assert via_ray == expected


def test_data_free_needs_no_input(ray_local, tiny_prior, tmp_path):
    cfg = load_config(None, [f"output={tmp_path}", f"model.path={tiny_prior}",
                             "nopt.data_free=true", "nopt.reference_multiplier=2", *FAST])
    result = run_job(cfg, progress=False)
    assert result.metrics["synthetic"] == 20 and result.metrics["real"] == 0
    assert json.loads((Path(result.run_url) / "run_config.json").read_text())["input"]["url"] == ""


def test_all_real_selection_needs_no_optimisation(ray_local, tiny_prior, digits_dir, tmp_path,
                                                  monkeypatch):
    # the default doping (k-center in the trained psi); the psi is trained here, with a short
    # recipe, into the job's cache, and the job's DopingSelector must use it, not train its own
    cfg = job(tmp_path, tiny_prior, digits_dir, "size.doping_fraction=1.0",
              f"doping.encoder={DopingConfig.encoder}")
    monkeypatch.setattr(class_store, "train_features",
                        partial(train_features, recipe=TrainRecipe(steps=100)))
    psi = InMemoryStore(cfg.input.url, cfg.input.layout, cfg.doping.encoder, cfg.seed,
                        join(cfg.output, "cache"), input_listing(cfg))
    psi.embeddings(0)
    weights = Path(psi.weights_url).read_bytes()
    result = run_job(cfg, progress=False)
    assert result.metrics["real"] == 20 and result.metrics["synthetic"] == 0
    assert [p.name for p in (tmp_path / "cache").glob("encoder-*")] == \
        [Path(psi.weights_url).name] and Path(psi.weights_url).read_bytes() == weights
    assert result.unit_spans == {} and result.units_by_node == {}  # no NoiseOptimizer ran
    samples = shard_contents(Path(result.run_url)).values()
    origins = {json.loads(s["json"])["origin"] for s in samples}
    assert len(origins) == 20 and all(o.startswith("digits_") for o in origins)


def test_images_the_prior_cannot_make_are_refused_before_the_run_starts(
        ray_local, tiny_prior, digits_dir, digits_rgb32_dir, tmp_path):
    # NOpt found this in every actor, and after the retries the job exited 1 ("rerun to
    # resume") leaving an incomplete run that no rerun could finish
    with pytest.raises(DscoError, match=r"are \(3, 32, 32\) \(C, H, W\) but the prior in .* "
                                        r"makes \(1, 8, 8\); resize the dataset"):
        run_job(job(tmp_path, tiny_prior, digits_dir, f"input.url={digits_rgb32_dir}"),
                progress=False)
    assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # no run folder
    # a selection of those images never meets the prior: it runs
    result = run_job(job(tmp_path, tiny_prior, digits_dir, f"input.url={digits_rgb32_dir}",
                         "size.doping_fraction=1.0"), progress=False)
    assert result.status == "complete" and result.metrics["real"] == 20


def test_class_folders_that_skip_a_digit_are_refused_before_the_input_is_read(tiny_prior,
                                                                              digits_dir,
                                                                              tmp_path):
    import numpy as np

    from pipeline.images import encode_png

    for folder in ("0", "2"):  # folder 1 is missing: "2" would be class 1, generated as a 1
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / folder / f"{i}.png").write_bytes(
                encode_png(np.full((8, 8, 1), 40 * i, dtype=np.uint8)))
    cfg = job(tmp_path / "out", tiny_prior, digits_dir, f"input.url={tmp_path / 'data'}",
              "input.layout=folders")
    with pytest.raises(DscoError, match=r"input class 1 is '2'.*model.class_map: \[0, 2\]"):
        run_job(cfg, progress=False)
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], ["cache"])


def test_a_selection_of_real_images_needs_no_model(ray_local, tiny_prior, digits_dir, tmp_path):
    with_prior = run_job(job(tmp_path / "a", tiny_prior, digits_dir, "size.doping_fraction=1.0"),
                         progress=False)
    without = run_job(job(tmp_path / "b", "", digits_dir, "size.doping_fraction=1.0"),
                      progress=False)
    assert without.status == "complete" and without.metrics["real"] == 20
    assert without.run_id != with_prior.run_id  # the model is part of what a run_id covers
    assert shard_contents(Path(without.run_url)) == shard_contents(Path(with_prior.run_url))


def test_without_a_model_a_job_that_needs_synthetic_images_is_refused_at_once(
        ray_local, digits_dir, tmp_path):
    with pytest.raises(DscoError, match="'model.path' is empty, so the job can only select "
                                        "real images, but every class gets 2 synthetic"):
        run_job(job(tmp_path / "out", "", digits_dir), progress=False)
    assert not (tmp_path / "out").exists()
    # a class smaller than its all-real budget would be filled with synthetic images
    with pytest.raises(DscoError, match=r"but class 0 \(it has \d+ real images\) gets"):
        run_job(job(tmp_path / "out", "", digits_dir, "size.doping_fraction=1.0",
                    "size.ipc=1000"), progress=False)


def test_only_units_with_synthetic_images_go_to_the_noise_optimizers(
        ray_local, tiny_prior, digits_dir, tmp_path):
    # 10% of each class: budgets of 15 pass the crossover of 14 and keep real samples only, so
    # unit 3 (classes 6 and 7) is all real while the other units have synthetic classes
    cfg = job(tmp_path, tiny_prior, digits_dir, "size.ipc=null", "size.fraction=0.1",
              "size.crossover_ipc=14", "execution.classes_per_unit=2")
    result = run_job(cfg, progress=False)
    assert sorted(result.unit_spans) == [0, 1, 2, 4]
    metas = [json.loads(s["json"]) for s in shard_contents(Path(result.run_url)).values()]
    counts = Counter((m["label"], m["source"]) for m in metas)
    assert counts[(6, "real")] == counts[(7, "real")] == 15
    assert counts[(0, "synthetic")] == 14 and counts[(1, "real")] == 15
    assert {m["source"] for m in metas if m["label"] in (6, 7)} == {"real"}


def test_doped_units_are_optimised_side_by_side(ray_local, tiny_prior, digits_dir, tmp_path):
    # two units of five classes for the two actors a 2-CPU Ray fits; each unit is doped
    cfg = job(tmp_path, tiny_prior, digits_dir, "size.doping_fraction=0.5", "size.ipc=4",
              "nopt.iterations=40", "execution.classes_per_unit=5")
    result = run_job(cfg, progress=False)
    assert result.metrics["real"] == 20 and len(result.unit_spans) == 2
    (start_a, end_a), (start_b, end_b) = result.unit_spans.values()
    assert max(start_a, start_b) < min(end_a, end_b)  # one began before the other ended


def test_a_unit_that_always_fails_is_retried_then_reported(ray_local, tmp_path, digits_dir,
                                                           tiny_prior):
    cfg = job(tmp_path / "out", tiny_prior, digits_dir,
              f"nopt.feature_map=pretrained:{misfit_resnet(tmp_path)}", "execution.max_retries=1")
    with pytest.raises(JobFailed, match="4 work unit.*failed after 1 retries.*hold conv1.weight "
                                        "of shape"):
        run_job(cfg, progress=False)
    [run_dir] = [p for p in (tmp_path / "out").iterdir() if p.name != "cache"]
    assert not (run_dir / "index.json").exists() or not read_index(str(run_dir))["complete"]
    assert not (tmp_path / "out" / "latest.json").exists()


def misfit_resnet(folder: Path) -> Path:
    """A ResNet-18 torch file (the driver reads only safetensors headers) with one tensor of
    the wrong shape: loading it fails inside every NoiseOptimizer call."""
    from pipeline.backbones import ResNet

    state = ResNet(18).state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, folder / "misfit.pth")
    return folder / "misfit.pth"


def test_a_first_pass_that_always_fails_is_retried_then_reported(ray_local, tmp_path,
                                                                 digits_dir, tiny_prior):
    cfg = job(tmp_path / "out", tiny_prior, digits_dir, "nopt.reweight_beta=0.5",
              f"nopt.feature_map=pretrained:{misfit_resnet(tmp_path)}", "execution.max_retries=1")
    with pytest.raises(JobFailed, match="work unit .* failed after 1 retries in NOpt's first "
                                        "pass: .*hold conv1.weight of shape"):
        run_job(cfg, progress=False)
    [run_dir] = [p for p in (tmp_path / "out").iterdir() if p.name != "cache"]
    assert not (run_dir / "hardness_nets.pt").exists()
    assert not (run_dir / "index.json").exists() or not read_index(str(run_dir))["complete"]


def test_a_prior_the_actors_cannot_load_fails_the_job_instead_of_looping(ray_local, tmp_path,
                                                                         digits_dir):
    prior = make_tiny_prior(tmp_path / "prior")
    # whole files (the driver's check passes), but weights unlike the config: only loading
    # the model finds that, and each actor fails doing so
    (prior / "unet" / "config.json").write_text("{}")
    with pytest.raises(JobFailed, match="3 NoiseOptimizer actors in a row died while starting"):
        run_job(job(tmp_path / "out", prior, digits_dir), progress=False)


def test_a_prior_changed_after_the_run_id_was_taken_is_refused_by_the_actors(
        ray_local, tmp_path, digits_dir, monkeypatch):
    # retrained into the same folder mid-run, or a stale copy on one node: units written from
    # it would carry the run_id of other weights
    import cluster.driver as driver

    prior = make_tiny_prior(tmp_path / "prior")
    [weights] = (prior / "unet").glob("*.safetensors")
    fingerprinted = driver.prior_files

    def then_retrain(model_dir, *version):
        rows = fingerprinted(model_dir, *version)
        if version:  # the digests the actors check against, taken as the run starts
            data = bytearray(weights.read_bytes())
            data[-1] ^= 1  # same size, other contents
            weights.write_bytes(bytes(data))
        return rows

    monkeypatch.setattr(driver, "prior_files", then_retrain)
    with pytest.raises(JobFailed, match=r"actors in a row died while starting; the last error: "
                                        r".*unet/diffusion_pytorch_model.safetensors has other "
                                        "contents than when the run started"):
        run_job(job(tmp_path / "out", prior, digits_dir), progress=False)


def test_an_interrupted_run_resumes_with_identical_output(doped_run, tmp_path):
    cfg, result = doped_run
    done = Path(result.run_url)
    crashed = tmp_path / done.name
    index = crashed_before_committing_unit_1(done, crashed)
    resumed = run_job(load_config(None, [f"output={tmp_path}", *_args(cfg)]), progress=False)
    assert resumed.run_id == result.run_id and resumed.status == "complete"
    assert_same_units(done, crashed)
    assert after_generation(crashed) == index["generation"] + 2  # unit 1 again, then complete


def crashed_before_committing_unit_1(done: Path, crashed: Path) -> dict:
    """Copy the complete run ``done`` to ``crashed`` as if its driver died after unit 1's
    tar was written but before its commit; returns the index left there."""
    shutil.copytree(done, crashed)
    index = json.loads((crashed / "index.json").read_text())
    lost = set(index["units"].pop("1")["shards"])
    index["shards"] = [s for s in index["shards"] if s["name"] not in lost]
    index["complete"] = False
    (crashed / "index.json").write_text(json.dumps(index))
    (crashed / "samples.parquet").unlink()
    return index


def assert_same_units(done: Path, resumed: Path) -> None:
    """The two runs' indexes list the same shards (same checksums) and unit metrics."""
    strip = ("generation", "updated")
    before = {k: v for k, v in read_index(str(done)).items() if k not in strip}
    after = {k: v for k, v in read_index(str(resumed)).items() if k not in strip}
    assert after["shards"] == before["shards"]
    assert after["units"] == before["units"]


def test_the_reweighted_second_pass_runs_for_every_unit_and_resumes_identically(
        ray_local, tiny_prior, digits_dir, tmp_path):
    reweighted = ["nopt.reweight_beta=0.5", "nopt.reweight_iterations=2"]
    result = run_job(job(tmp_path / "out", tiny_prior, digits_dir, *reweighted), progress=False)
    done = Path(result.run_url)
    assert (done / "hardness_nets.pt").is_file()
    units = read_index(str(done))["units"]
    assert len(units) == 4
    for unit in units.values():  # T = 2 iterations, then the second pass's 2
        assert all(len(m["loss_history"]) == 4 for m in unit["metrics"].values())
    plain = run_job(job(tmp_path / "plain", tiny_prior, digits_dir), progress=False)
    assert plain.run_id != result.run_id
    synthetic = {k: v for k, v in shard_contents(done).items() if "_syn_" in k}
    plain_synthetic = {k: v for k, v in shard_contents(Path(plain.run_url)).items()
                       if "_syn_" in k}
    assert synthetic.keys() == plain_synthetic.keys()
    assert all(synthetic[k]["png"] != plain_synthetic[k]["png"] for k in synthetic)
    # resumed with the saved nets (unit 1 runs both passes), and without them (the first
    # pass runs again for every unit and the nets are trained anew): the same output
    for name, keep_nets in (("kept", True), ("retrained", False)):
        crashed = tmp_path / name / done.name
        crashed_before_committing_unit_1(done, crashed)
        if not keep_nets:
            (crashed / "hardness_nets.pt").unlink()
        resumed = run_job(job(tmp_path / name, tiny_prior, digits_dir, *reweighted),
                          progress=False)
        assert resumed.run_id == result.run_id and resumed.status == "complete"
        assert_same_units(done, crashed)
        assert (crashed / "hardness_nets.pt").read_bytes() == \
            (done / "hardness_nets.pt").read_bytes()


def after_generation(run_dir: Path) -> int:
    return read_index(str(run_dir))["generation"]


def _args(cfg) -> list[str]:
    return [f"model.path={cfg.model.path}", f"input.url={cfg.input.url}",
            "size.doping_fraction=0.5", *FAST]


def test_run_to_s3_on_moto(ray_local, moto_env, tiny_prior, digits_dir):
    bucket = s3_bucket(moto_env, "jobs")
    cfg = job(f"{bucket}/digits", tiny_prior, digits_dir, "size.doping_fraction=0.5")
    result = run_job(cfg, progress=False)
    assert result.run_url.startswith("s3://jobs/digits/")
    assert read_index(result.run_url)["complete"]


def test_noise_optimizer_reports_where_it_runs(ray_local, tiny_prior):
    import ray

    from actors.noise_optimizer import NoiseOptimizer
    from pipeline.config import NoptConfig

    actor = NoiseOptimizer.options(num_cpus=1).remote(str(tiny_prior), NoptConfig(), 0,
                                                      [str(i) for i in range(10)], 1)
    placement = ray.get(actor.placement.remote())
    assert placement["gpu_ids"] == [] and placement["device"] == "cpu"
    assert placement["model_device"] == "cpu" and placement["node_id"]
    ray.kill(actor)


def test_the_latent_dit_job_runs_end_to_end_on_rgb_shards(ray_local, tiny_dit, digits_rgb32_dir,
                                                          tmp_path):
    from pipeline.images import decode_image

    cfg = load_config(None, [f"output={tmp_path / 'out'}", f"model.path={tiny_dit}",
                             f"input.url={digits_rgb32_dir}", *FAST, "nopt.guidance=2.0",
                             "size.doping_fraction=0.5"])
    result = run_job(cfg, progress=False)
    assert result.status == "complete" and result.metrics["synthetic"] == 10
    samples = shard_contents(Path(result.run_url))
    assert len(samples) == 20
    sources = {json.loads(s["json"])["source"] for s in samples.values()}
    assert sources == {"synthetic", "real"}
    assert {decode_image(s["png"], k).shape for k, s in samples.items()} == {(32, 32, 3)}
