"""The run report: metrics.json, report.md and a per-class image grid (PNG)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.images import decode_image
from pipeline.storage import join, write_bytes, write_json

GRID_COLUMNS = 10
CELL = 32  # pixels per image in the grid (nearest-neighbour upscaled)


def image_grid(rows: list[list[bytes]]) -> bytes:
    """A PNG with one row per class and up to GRID_COLUMNS images each."""
    canvas = np.zeros((max(1, len(rows)) * CELL, GRID_COLUMNS * CELL, 3), dtype=np.uint8)
    for r, images in enumerate(rows):
        for c, data in enumerate(images[:GRID_COLUMNS]):
            img = decode_image(data)
            img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
            cell = Image.fromarray(img).resize((CELL, CELL), Image.NEAREST)
            canvas[r * CELL:(r + 1) * CELL, c * CELL:(c + 1) * CELL] = np.asarray(cell)
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def markdown_report(metrics: dict) -> str:
    """A short human-readable summary of a run's metrics."""
    lines = [f"# DsCo run {metrics['run_id']}", "",
             f"- samples: {metrics['samples']} ({metrics['synthetic']} synthetic, "
             f"{metrics['real']} real) in {metrics['shards']} shards",
             f"- classes: {len(metrics['classes'])}", "",
             "| class | synthetic | real | final MMD^2 | first MMD^2 |", "|---|---|---|---|---|"]
    for label, m in sorted(metrics["classes"].items(), key=lambda kv: int(kv[0])):
        first = m.get("loss_history") or [None]
        lines.append(f"| {label} | {m['synthetic']} | {m['real']} | "
                     f"{_fmt(m.get('final_mmd'))} | {_fmt(first[0])} |")
    return "\n".join(lines) + "\n"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_report(run_url: str, metrics: dict, grid_rows: list[list[bytes]]) -> None:
    """Write report/metrics.json, report/report.md and report/grid.png."""
    write_json(join(run_url, "report", "metrics.json"), metrics)
    write_bytes(join(run_url, "report", "report.md"), markdown_report(metrics).encode())
    write_bytes(join(run_url, "report", "grid.png"), image_grid(grid_rows))
