"""Byte-reproducible tar archives (fixed mtime, owner and mode), the container of every shard."""
from __future__ import annotations

import io
import tarfile


def build_tar(members: list[tuple[str, bytes]]) -> bytes:
    """Return the bytes of a tar holding ``members`` (name, payload) in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o644
            info.mtime = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
