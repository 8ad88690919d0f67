"""Resume by shard: a `mugv curate` killed half way (SIGKILL) and run again writes the same
manifest, byte for byte, as a run never interrupted; inputs that vanish or are cut short after
they were listed become rows with their reasons."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from curate_testing import FPS, curate_config, shot

import mugv
from mugv.curate.runner import run_curation
from mugv.video import write_mp4

VIDEOS = 10
SETTINGS = ["--clips.min_seconds=1.5", "--run.workers=1", "--run.progress=false", "--run.shard_size=2",
            "--postprocess.judge=curate_testing:judge_that_takes_its_time"]


def _corpus(folder: Path) -> Path:
    folder.mkdir()
    for index in range(VIDEOS - 1):
        write_mp4(folder / f"v{index}.mp4", shot(100 + index, frames=40), FPS)
    shutil.copyfile(folder / "v2.mp4", folder / "v9-copy-of-v2.mp4")  # a duplicate, found across parts
    return folder


def _curate_command(corpus: Path, out: Path) -> tuple[list[str], dict]:
    here = Path(__file__).parent  # for the judge in curate_testing
    path = os.pathsep.join([str(here), str(Path(mugv.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "mugv", "curate", str(corpus), "--out", str(out), *SETTINGS]
    return command, {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("parts/*/shard-*.parquet"))


def test_a_run_killed_half_way_resumes_to_the_same_manifest(tmp_path):
    corpus = _corpus(tmp_path / "videos")
    reference = run_curation(corpus, tmp_path / "uninterrupted", curate_config(*SETTINGS))
    shards = len(_parts(tmp_path / "uninterrupted"))
    assert reference.files_processed == VIDEOS and 2 < shards < VIDEOS  # groups of 1-several videos
    assert "duplicate" in {r["reason"] for r in reference.rows}

    out = tmp_path / "killed"
    command, env = _curate_command(corpus, out)
    # Killed with a pool of two workers, resumed in-process: how rows were computed does not show.
    run = subprocess.Popen([*command, "--run.workers=2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_parts(out)) < 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(run.pid)
    run.send_signal(signal.SIGKILL)
    run.wait()
    written = len(_parts(out))
    assert run.returncode == -signal.SIGKILL, run.stderr.read().decode()[-2000:]
    assert 2 <= written < shards and not (out / "manifest.parquet").exists()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) >= 2 and not any(_running(pid) for pid in workers)  # no worker outlives the runner
    done = sum(len(set(pq.read_table(p, columns=["video_id"]).column(0).to_pylist())) for p in _parts(out))

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    processed = int(resumed.stdout.split("(")[-1].split(" files processed")[0])
    assert processed == VIDEOS - done and 0 < processed < VIDEOS
    assert len(_parts(out)) == shards
    assert (out / "manifest.parquet").read_bytes() == (tmp_path / "uninterrupted" / "manifest.parquet").read_bytes()
    assert (out / "summary.txt").read_text() == (tmp_path / "uninterrupted" / "summary.txt").read_text()


def test_a_part_being_written_when_killed_is_never_trusted(tmp_path, shots):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "a.mp4", shots["a"], FPS)
    first = run_curation(videos, tmp_path / "out", curate_config())
    [part] = _parts(tmp_path / "out")
    part.rename(part.with_suffix(".parquet.partial"))  # as left by a kill between write and rename
    again = run_curation(videos, tmp_path / "out", curate_config())
    assert again.files_processed == 1 and again.rows == first.rows
    assert [p.name for p in part.parent.iterdir()] == [part.name]


def test_inputs_that_vanish_or_shrink_after_listing_become_rows(tmp_path, shots):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_mp4(videos / "first.mp4", shots["a"], FPS)  # curated first: its judge damages the others
    write_mp4(videos / "shrinks.mp4", shots["b"], FPS)
    write_mp4(videos / "vanishes.mp4", shots["c"], FPS)
    write_mp4(videos / "zz-fine.mp4", shots["d"], FPS)
    judge = "--postprocess.judge=curate_testing:judge_that_damages_later_inputs"
    result = run_curation(videos, tmp_path / "out", curate_config(judge, "--dedup.enabled=false"))
    outcome = {os.path.basename(r["path"]): (r["clip_index"], r["status"], r["reason"]) for r in result.rows}
    assert outcome == {
        "first.mp4": (0, "kept", ""),
        "shrinks.mp4": (-1, "rejected", "unreadable"),  # an mp4 cut before its index
        "vanishes.mp4": (-1, "rejected", "missing_file"),
        "zz-fine.mp4": (0, "kept", ""),
    }
    assert not (videos / "vanishes.mp4").exists() and (videos / "shrinks.mp4").stat().st_size == 1000
