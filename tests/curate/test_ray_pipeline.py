"""The Ray backend: the curation stages as a Ray Data pipeline on a local 2-CPU Ray instance
(started once for the module), against the process backend; dedup's LSH bands as Ray tasks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from curate_testing import curate_config, write_corpus

from mugv.curate import dedup
from mugv.curate.runner import run_curation
from mugv.curate.testing import write_random_qwen2vl

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shots):
    return write_corpus(tmp_path_factory.mktemp("corpus"), shots)


def _by_clip(rows: list[dict]) -> dict[str, dict]:
    return {row["clip_id"]: row for row in rows}


def test_ray_pipeline_writes_the_manifest_of_the_process_backend(corpus, tmp_path):
    local = run_curation(corpus, tmp_path / "local", curate_config())
    on_ray = run_curation(corpus, tmp_path / "ray", curate_config("--run.backend=ray"))
    assert on_ray.files_processed == local.files_processed == 10
    # Every column of every row, scores and captions included: the same stage functions ran.
    assert _by_clip(on_ray.rows) == _by_clip(local.rows) and len(local.rows) > 10
    reasons = {reason for row in on_ray.rows for reason in row["reason"].split(";")}
    assert {"duplicate", "blurry", "text_overlay", "not_a_video", "caption_sidecar"} <= reasons
    # The rerun resumes from the parts the Ray run wrote.
    assert run_curation(corpus, tmp_path / "ray", curate_config("--run.backend=ray")).files_processed == 0


def test_captioning_actors_batch_as_the_process_backend_does(tmp_path_factory, shots):
    """Qwen2-VL (tiny, random) captions the kept clips: in the parent process a batch of 3 clips
    across videos at a time, on Ray a CPU actor (of the 2 CPUs) 2 clips a call; the manifests
    equal the one captioned a clip at a time."""
    corpus = tmp_path_factory.mktemp("videos")
    write_corpus(corpus, shots)
    model = tmp_path_factory.mktemp("qwen")
    write_random_qwen2vl(model)
    out = tmp_path_factory.mktemp("out")
    captions = ["--caption.captioner=qwen2vl", f"--caption.model_path={model}", "--caption.frames=3",
                "--caption.short_side=56", "--caption.max_new_tokens=6", "--caption.use_existing=false"]  # fmt: skip
    alone = run_curation(corpus, out / "alone", curate_config(*captions, "--caption.batch_size=1"))
    batched = run_curation(corpus, out / "batched", curate_config(*captions, "--caption.batch_size=3"))
    on_ray = run_curation(
        corpus, out / "ray",
        curate_config(*captions, "--caption.batch_size=2", "--caption.actors=1", "--run.backend=ray"),
    )  # fmt: skip
    described = [row for row in alone.rows if row["caption_source"] == "qwen2vl"]
    assert len(described) >= 5 and len({row["caption"] for row in described}) > 1
    assert _by_clip(batched.rows) == _by_clip(alone.rows) == _by_clip(on_ray.rows)


def test_lsh_on_ray_matches_one_machine():
    hashes, _ = dedup.planted_near_duplicates(np.random.default_rng(4), 2000)
    cfg = dedup.DedupConfig(backend="local")
    on_ray = dedup.similar_pairs(replace(cfg, backend="ray"), hashes, None)
    assert on_ray == dedup.similar_pairs(cfg, hashes, None) and len(on_ray) > 300
