"""The curate runner end to end on synthetic videos with known cuts, blur, stills, text and a
duplicate, beside files that are not videos; resume; table inputs; the CLI; the process pool
(the Ray backend: test_ray_pipeline.py)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_testing import FPS, curate_config, write_corpus

from mugv.cli import main
from mugv.curate.manifest import COLUMNS
from mugv.curate.runner import run_curation
from mugv.data.encode import load_frames, read_manifest
from mugv.vae_train.data import discover
from mugv.video import write_mp4


ONE_VIDEO_SHARDS = "--run.shard_size=1"  # resume granularity: every video its own part


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shots):
    return write_corpus(tmp_path_factory.mktemp("corpus"), shots)


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return run_curation(corpus, out, curate_config()), out


def _by_file(rows):
    result = {}
    for row in rows:
        result.setdefault(os.path.basename(row["path"]), []).append(row)
    return result


def test_manifest_has_one_row_per_candidate_with_all_columns(curated):
    result, out = curated
    table = pq.read_table(out / "manifest.parquet")
    assert table.column_names == COLUMNS and table.num_rows == len(result.rows)
    files = _by_file(result.rows)
    assert sorted(files) == ["blur.mp4", "cuts.mp4", "dissolve.mp4", "nested_copy.mp4", "notes.md", "pan.mp4",
                             "pan.txt", "still.mp4", "text.mp4", "voice.m4a"]
    for row in result.rows:
        assert row["status"] in ("kept", "rejected") and (row["status"] == "kept") == (row["reason"] == "")


def test_every_input_file_is_accounted_for(corpus, curated):
    """Every file under the input folder has rows, absolute paths; non-videos one rejected row each."""
    result, _ = curated
    assert {r["path"] for r in result.rows} == {str(p) for p in corpus.rglob("*") if p.is_file()}
    files = _by_file(result.rows)
    for name, reason in (("notes.md", "not_a_video"), ("voice.m4a", "not_a_video"), ("pan.txt", "caption_sidecar")):
        assert [(r["clip_index"], r["status"], r["reason"]) for r in files[name]] == [(-1, "rejected", reason)], name


def test_cuts_split_the_video_at_the_true_shot_changes(curated):
    clips = _by_file(curated[0].rows)["cuts.mp4"]
    margin = 2  # 0.1 s at 24 fps
    assert [(r["start_frame"], r["end_frame"]) for r in clips] == [
        (0, 48 - margin),
        (48 + margin, 96 - margin),
        (96 + margin, 144),
    ]
    assert [r["boundary_after"] for r in clips] == ["cut", "cut", "end"]
    assert clips[1]["start_time"] == pytest.approx(50 / FPS) and clips[1]["fps"] == pytest.approx(FPS, rel=1e-3)


def test_dissolve_is_a_gradual_boundary(curated):
    clips = _by_file(curated[0].rows)["dissolve.mp4"]
    assert [r["boundary_after"] for r in clips] == ["gradual", "end"]
    assert 72 <= clips[0]["end_frame"] <= 82 and 94 <= clips[1]["start_frame"] <= 102
    assert all(r["status"] == "kept" for r in clips)


def test_filters_reject_blur_stills_and_text_with_reasons(curated):
    files = _by_file(curated[0].rows)
    assert "blurry" in files["blur.mp4"][0]["reason"].split(";")
    assert set(files["still.mp4"][0]["reason"].split(";")) == {"low_motion", "static"}
    assert files["text.mp4"][0]["reason"] == "text_overlay"
    for row in files["blur.mp4"] + files["still.mp4"] + files["text.mp4"]:
        assert row["sharpness"] is not None and row["motion"] is not None and row["aesthetic"] is not None
        assert row["caption"] is None  # rejected clips are not captioned


def test_duplicate_cluster_keeps_the_better_clip(curated):
    files = _by_file(curated[0].rows)
    original, copy = files["cuts.mp4"][0], files["nested_copy.mp4"][0]
    # the copy is longer (no margin before a cut), so it scores higher and is kept
    assert copy["status"] == "kept" and original["reason"] == "duplicate"
    assert original["dup_cluster"] == copy["dup_cluster"] == copy["clip_id"]
    assert sum(1 for r in curated[0].rows if r["dup_cluster"]) == 2


def test_captions_and_entities(curated):
    pan = _by_file(curated[0].rows)["pan.mp4"][0]
    assert pan["status"] == "kept" and pan["caption_source"] == "sidecar"
    assert pan["category"] == "urban" and pan["entities"] == ["people:man", "urban:city", "urban:street", "vehicles:bicycle"]
    templated = _by_file(curated[0].rows)["cuts.mp4"][1]
    assert templated["caption_source"] == "template" and templated["caption"].startswith("A 1.8-second landscape")


def test_summary_counts_reasons(curated):
    summary = curated[0].summary
    assert "files: 10 (3 without any candidate clip)" in summary and "duplicate" in summary and "blurry" in summary
    kept = sum(1 for r in curated[0].rows if r["status"] == "kept")
    rejected = [r for r in curated[0].rows if r["status"] == "rejected"]
    clips = sum(1 for r in rejected if r["clip_index"] >= 0)
    assert clips > 0 and f"kept: {kept} " in summary
    assert f"rejected: {len(rejected)} ({clips} clips, 3 files)" in summary
    assert "\nnot_a_video" in summary and "\ncaption_sidecar" in summary
    assert (curated[1] / "summary.txt").read_text().strip() == summary


def test_rerun_resumes_and_changed_settings_recompute(corpus, tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for name in ("blur.mp4", "cuts.mp4", "sub/pan.mp4", "sub/pan.txt"):
        (videos / name).write_bytes((corpus / name).read_bytes())
    out = videos / "curated"  # inside the input: what the run writes there is not curated
    first = run_curation(videos, out, curate_config(ONE_VIDEO_SHARDS))
    assert first.files_processed == 4 and not any("curated" in r["path"] for r in first.rows)
    again = run_curation(videos, out, curate_config(ONE_VIDEO_SHARDS))
    assert again.files_processed == 0 and again.rows == first.rows
    os.utime(videos / "blur.mp4", ns=(1, 1))  # a changed file is curated again, and only its shard
    assert run_curation(videos, out, curate_config(ONE_VIDEO_SHARDS)).files_processed == 1
    changed = run_curation(videos, out, curate_config(ONE_VIDEO_SHARDS, "--sharpness.min_score=1"))
    assert changed.files_processed == 4
    assert "blurry" not in _by_file(changed.rows)["blur.mp4"][0]["reason"]
    # dedup and balance settings apply to the whole manifest without re-decoding anything
    balanced = run_curation(videos, out, curate_config(ONE_VIDEO_SHARDS, "--sharpness.min_score=1", "--balance.mix=['urban=1']"))
    assert balanced.files_processed == 0
    assert [os.path.basename(r["path"]) for r in balanced.rows if r["status"] == "kept"] == ["pan.mp4"]


def test_a_manifest_written_from_relative_paths_is_read_from_another_directory(corpus, tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "cuts.mp4").write_bytes((corpus / "cuts.mp4").read_bytes())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    run_curation("videos", "out", curate_config("--dedup.enabled=false"))
    monkeypatch.chdir(tmp_path / "elsewhere")
    manifest = str(tmp_path / "out" / "manifest.parquet")
    kept, _ = read_manifest(manifest)  # what `mugv encode` reads
    assert len(kept) == 3 and all(os.path.isabs(r["path"]) for r in kept)
    frames, _ = load_frames(kept[1], short_side=72)
    assert frames.shape == (kept[1]["end_frame"] - kept[1]["start_frame"], 72, 96, 3)
    assert discover([manifest]) == [tmp_path / "videos" / "cuts.mp4"]  # what `mugv vae train --source` reads


def test_table_input_carries_columns_and_screens_licences(corpus, tmp_path):
    table = tmp_path / "videos.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "caption", "source", "license"])
        writer.writerow([str(corpus / "sub" / "pan.mp4"), "a cat on a sofa", "studio", "cc-by"])
        writer.writerow(["cuts.mp4", "", "web", "unknown"])  # relative to the table's folder
    (tmp_path / "cuts.mp4").write_bytes((corpus / "cuts.mp4").read_bytes())
    result = run_curation(table, tmp_path / "out", curate_config("--screen.allowed_licenses=['cc-by']"))
    rows = _by_file(result.rows)
    pan = rows["pan.mp4"][0]
    assert (pan["source"], pan["license"], pan["input_caption"], pan["caption"], pan["caption_source"]) == (
        "studio",
        "cc-by",
        "a cat on a sofa",
        "a cat on a sofa",
        "input",
    )
    assert pan["category"] == "animals"
    assert rows["cuts.mp4"] == [pytest.approx(rows["cuts.mp4"][0])] and rows["cuts.mp4"][0]["reason"] == "license_not_allowed"


def test_cli_runs_with_overrides_and_pool_matches_serial(corpus, tmp_path, capsys, curated):
    code = main(
        ["curate", str(corpus), "--out", str(tmp_path), "--workers", "2", "--clips.min_seconds=1.5", "--run.progress=false"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "candidate clips" in printed and "manifest.parquet" in printed
    pooled = pq.read_table(tmp_path / "manifest.parquet").to_pylist()
    serial = curated[0].rows

    def outcome(rows):
        return [(r["path"], r["clip_index"], r["status"], r["reason"]) for r in rows]

    assert outcome(pooled) == outcome(serial)


def test_cli_reports_config_errors(tmp_path, capsys):
    assert main(["curate", str(tmp_path), "--out", str(tmp_path), "--motion.min_scor=1"]) == 2
    assert "motion.min_score" in capsys.readouterr().err


def test_edited_table_columns_are_curated_again(corpus, tmp_path):
    table = tmp_path / "videos.csv"
    table.write_text(f"path,caption\n{corpus / 'sub' / 'pan.mp4'},a cat on a sofa\n")
    first = run_curation(table, tmp_path / "out", curate_config())
    table.write_text(f"path,caption\n{corpus / 'sub' / 'pan.mp4'},a horse in a field\n")
    second = run_curation(table, tmp_path / "out", curate_config())
    assert first.files_processed == second.files_processed == 1
    assert (first.rows[0]["caption"], second.rows[0]["caption"]) == ("a cat on a sofa", "a horse in a field")


def test_a_crashing_worker_is_recorded_and_the_run_goes_on(tmp_path, shots):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "crash.mp4", shots["a"], FPS)
    write_mp4(videos / "fine.mp4", shots["b"], FPS)
    judge = "--postprocess.judge=curate_testing:judge_that_kills_its_process"
    result = run_curation(videos, tmp_path / "out", curate_config("--run.workers=2", judge))
    outcome = {os.path.basename(r["path"]): (r["status"], r["reason"]) for r in result.rows}
    assert outcome == {"crash.mp4": ("rejected", "worker_crashed"), "fine.mp4": ("kept", "")}
