"""The demo's and the benchmark's prior: trained once per folder, reused only when it was trained
with the settings asked for (a --quick folder's tiny prior must not build the full table)."""
import shutil

import pytest

from cluster.demo import ensure_prior
from pipeline.errors import DscoError
from pipeline.prior_training import PriorTrainingConfig

TINY = PriorTrainingConfig(steps=2, batch_size=8, channels=(8, 16))


def test_a_prior_trained_with_other_settings_is_refused(tmp_path, digits_dir):
    shutil.copytree(digits_dir, tmp_path / "data")
    model_dir = ensure_prior(str(tmp_path), TINY, progress=False)
    weights = tmp_path / "prior" / "unet" / "diffusion_pytorch_model.safetensors"
    trained = weights.stat().st_mtime_ns
    assert ensure_prior(str(tmp_path), TINY, progress=False) == model_dir  # reused as it is
    assert weights.stat().st_mtime_ns == trained
    with pytest.raises(DscoError, match=r"trained with other settings \(steps=2; this needs "
                                        r"steps=2500\): use another --out"):
        ensure_prior(str(tmp_path), PriorTrainingConfig(channels=(8, 16), batch_size=8),
                     progress=False)
    (tmp_path / "prior_training.json").unlink()  # a prior trained before the record existed
    assert ensure_prior(str(tmp_path), PriorTrainingConfig(), progress=False) == model_dir
