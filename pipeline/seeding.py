"""Deterministic seeds derived from the run seed and a path of integers (class, sample, ...)."""
import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """Return a 63-bit seed that depends only on ``parts`` (stable across processes and runs)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A CPU torch generator seeded from ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
