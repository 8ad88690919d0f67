"""`--backend ray`: the per-video stage as a Ray Data pipeline, for clusters.

Each video is one dataset row; `flat_map` runs `curate_video` on a Ray worker (which decodes the
file itself, so only paths and result rows cross the network) and yields the clip rows. Rows are
regrouped by video as they stream back, so the runner can write each finished video's part file
(resume works as with the process pool)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict

from mugv.curate.config import CurateConfig
from mugv.curate.inputs import InputItem

MAX_BLOCKS = 4096


def execute_with_ray(
    pending: list[tuple[str, InputItem]], cfg: CurateConfig, curate_video: Callable[[InputItem, CurateConfig], list[dict]]
) -> Iterator[tuple[str, list[dict]]]:
    """Run `curate_video` (the runner's per-video work, passed in so this module does not import
    the runner) over `pending` on Ray Data; yields (video_id, rows) as videos complete."""
    import ray

    if not ray.is_initialized():
        options = {"address": cfg.run.ray_address} if cfg.run.ray_address else {"num_cpus": cfg.run.workers or None}
        ray.init(**options, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    def curate_row(row: dict) -> list[dict]:
        rows = curate_video(InputItem(**row["item"]), cfg)
        return [{"video_id": row["video_id"], "index": i, "total": len(rows), "row": r} for i, r in enumerate(rows)]

    items = [{"video_id": vid, "item": asdict(item)} for vid, item in pending]
    # Small blocks: one video's decode is the unit of work, so blocks of a few videos balance well.
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_BLOCKS)).flat_map(curate_row)
    collected: dict[str, list[dict]] = {}
    for record in dataset.iter_rows():
        rows = collected.setdefault(record["video_id"], [None] * record["total"])
        rows[record["index"]] = record["row"]
        if all(r is not None for r in rows):
            yield record["video_id"], collected.pop(record["video_id"])
