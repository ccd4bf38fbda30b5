"""The entries of ``<output>/cache`` by name, torch-free (the driver records a run's tag and
`dsco gc` matches entries to it): one tag per input listing, doping encoder and seed."""
from __future__ import annotations

import hashlib
import json
import re

from pipeline.config import PRETRAINED
from pipeline.datasets import InputFile
from pipeline.fingerprint import file_version

CACHE = "cache"
EMBED_STAGE_META = "meta.json"  # inside the embed stage's folder, written last
# embeddings-<tag>.parquet, encoder-<tag>.safetensors (the in-memory store), embeddings-<tag>/
ENTRY = re.compile(r"^(?:embeddings|encoder)-([0-9a-f]{16})(?:\.parquet|\.safetensors)?$")


def embedding_tag(listing: list[InputFile], encoder: str, seed: int) -> str:
    """Names the cached embeddings of one input listing under one encoder and seed (and, for
    ``pretrained:<path>``, that file's content: new weights at the same path embed anew)."""
    text = json.dumps([f.__dict__ for f in listing], sort_keys=True)
    if encoder.startswith(PRETRAINED):
        text += json.dumps(file_version(encoder[len(PRETRAINED):]))
    return hashlib.sha256(f"{text}|{encoder}|{seed}".encode()).hexdigest()[:16]


def embeddings_file(tag: str) -> str:
    """The in-memory store's embeddings."""
    return f"embeddings-{tag}.parquet"


def encoder_file(tag: str) -> str:
    """A trained psi's weights, beside its embeddings."""
    return f"encoder-{tag}.safetensors"


def embed_stage_folder(tag: str) -> str:
    """The embed stage's Parquet partitions and meta.json."""
    return f"embeddings-{tag}"
