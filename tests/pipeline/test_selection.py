"""The doping stage over a class store: the mmd selector's boundary lean, end to end."""
import numpy as np

from pipeline.config import DopingConfig
from pipeline.doping import random_pick
from pipeline.planning import ClassBudget, WorkUnit
from pipeline.samples import UnitOutput
from pipeline.selection import RealDataStage


class PointStore:
    """A class store over 2-D points: class 0 is a wide blob, class 1 a blob at x = 3."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.points = [rng.normal(0, 1.5, (120, 2)), rng.normal([3, 0], 0.5, (40, 2))]
        self.class_names = ["blob", "neighbour"]
        self.embeddings_url = "memory://points"
        self.encoder = None  # no synthetic samples to embed here

    def class_sizes(self) -> list[int]:
        return [len(p) for p in self.points]

    def embeddings(self, label: int) -> np.ndarray:
        return self.points[label].astype(np.float32)

    def samples(self, label: int, picks: list[int]) -> list[tuple[str, bytes, str]]:
        return [(str(p), b"", "png") for p in picks]


def doped_x(boundary_weight: float, real: int) -> np.ndarray:
    """x coordinates of the class-0 points the stage picks for a budget of ``real``."""
    store = PointStore()
    stage = RealDataStage(store, DopingConfig(selector="mmd", boundary_weight=boundary_weight),
                          seed=0)
    unit = WorkUnit(0, (ClassBudget(0, 0, real),), 0, 1)
    out = stage.dope(unit, UnitOutput(0))
    return store.points[0][[int(s.origin) for s in out.samples], 0]


def test_the_lean_moves_large_selections_toward_the_other_class():
    plain, leaning = doped_x(0.0, 60), doped_x(3.0, 60)
    assert len(set(leaning)) == 60
    assert leaning.mean() > plain.mean() + 0.3  # class 1 lies toward +x


def test_the_lean_scales_with_the_share_kept():
    # 6 of 120 kept: the strength is a twentieth of the setting, the picks barely move
    assert abs(doped_x(3.0, 6).mean() - doped_x(0.0, 6).mean()) < \
        doped_x(3.0, 60).mean() - doped_x(0.0, 60).mean()


def test_random_doping_never_embeds():
    store = PointStore()

    def no_psi(label):
        raise AssertionError("random doping read embeddings (a trained psi would be trained)")

    store.embeddings = no_psi
    stage = RealDataStage(store, DopingConfig(selector="random"), seed=4)
    out = stage.dope(WorkUnit(0, (ClassBudget(0, 0, 7),), 0, 1), UnitOutput(0))
    assert [int(s.origin) for s in out.samples] == random_pick(120, 7, 4, 0)
