"""Inputs beyond a local folder: fsspec URLs (memory:// stands in for s3:// and gs://), list
files of paths and URLs, and the errors for a missing entry, an unknown protocol and credentials
in a config or a URL."""

from __future__ import annotations

import importlib.util
import os

import fsspec
import pytest
from curate_testing import FPS, curate_config, shot

from mugv.cli import main
from mugv.config import ConfigError
from mugv.curate.inputs import InputItem, read_inputs
from mugv.curate.runner import curate_video, run_curation, video_id
from mugv.video import write_mp4


@pytest.fixture
def store(tmp_path):
    """A local folder of two videos and a note, and the same files in memory://<test>/videos."""
    local = tmp_path / "videos"
    local.mkdir()
    write_mp4(local / "a.mp4", shot(1, frames=40), FPS)
    write_mp4(local / "b.mp4", shot(2, frames=40), FPS)
    (local / "notes.md").write_text("not a video")
    memory = fsspec.filesystem("memory")
    root = f"/{tmp_path.name}"
    for path in local.iterdir():
        memory.pipe_file(f"{root}/videos/{path.name}", path.read_bytes())
    yield local, f"memory://{tmp_path.name}"
    memory.rm(root, recursive=True)


def _outcome(rows):
    return [(os.path.basename(r["path"]), r["video_id"], r["clip_index"], r["status"], r["reason"], r["caption"]) for r in rows]


def test_a_memory_url_folder_curates_as_the_local_copy_and_keeps_its_urls(store, tmp_path):
    local, url = store
    cache = tmp_path / "cache"
    remote = run_curation(f"{url}/videos/", tmp_path / "remote", curate_config(f"--run.cache_dir={cache}"))
    here = run_curation(local, tmp_path / "local", curate_config())
    assert [r["path"] for r in remote.rows] == [f"{url}/videos/{name}" for name in ("a.mp4", "b.mp4", "notes.md")]
    # The same names within the input and the same bytes: the same ids and the same verdicts.
    assert _outcome(remote.rows) == _outcome(here.rows) and remote.rows[0]["status"] == "kept"
    assert list((cache / "mugv-curate-cache").iterdir()) == []  # each copy is removed after its video
    again = run_curation(f"{url}/videos", tmp_path / "remote", curate_config(f"--run.cache_dir={cache}"))
    assert again.files_processed == 0 and _outcome(again.rows) == _outcome(remote.rows)


def test_a_list_file_mixes_local_paths_and_urls(store, tmp_path):
    local, url = store
    listing = tmp_path / "list.txt"
    listing.write_text(f"# the corpus\n\nvideos/a.mp4\n   \n{url}/videos/b.mp4\n# done\n{local / 'notes.md'}\n")
    items = read_inputs(listing)
    assert [(i.path, i.name) for i in items] == [
        (str(local / "a.mp4"), "videos/a.mp4"),
        (f"{url}/videos/b.mp4", f"{url}/videos/b.mp4"),
        (str(local / "notes.md"), "videos/notes.md"),
    ]
    rows = run_curation(listing, tmp_path / "out", curate_config()).rows
    assert [(r["path"], r["status"]) for r in rows] == [
        (str(local / "a.mp4"), "kept"), (f"{url}/videos/b.mp4", "kept"), (str(local / "notes.md"), "rejected")
    ]


def test_a_list_file_in_the_store_names_files_beside_it(store):
    local, url = store
    listing = f"videos/a.mp4\nfile://{local / 'b.mp4'}\n"
    fsspec.filesystem("memory").pipe_file(f"{url}/list.txt".removeprefix("memory:/"), listing.encode())
    items = read_inputs(f"{url}/list.txt")
    assert [(i.path, i.name) for i in items] == [(f"{url}/videos/a.mp4", "videos/a.mp4"), (str(local / "b.mp4"),) * 2]


def test_listing_errors_name_the_list_line_and_protocol(store, tmp_path):
    local, url = store
    listing = tmp_path / "list.txt"
    listing.write_text(f"videos/a.mp4\n# gone:\nvideos/gone.mp4\n{url}/videos/gone-too.mp4\n")
    with pytest.raises(ConfigError, match=r"list.txt: 2 listed file\(s\) do not exist: line 3: .*gone.mp4; line 4: memory://"):
        read_inputs(listing)
    listing.write_text("videos/a.mp4\nfoo://bucket/x.mp4\n")
    with pytest.raises(ConfigError, match=r"list.txt line 2: unknown protocol 'foo://'"):
        read_inputs(listing)
    with pytest.raises(ConfigError, match="unknown protocol 'foo://'"):
        read_inputs("foo://bucket/videos/")
    if importlib.util.find_spec("s3fs") is None:  # an optional extra: its absence is named with the fix
        with pytest.raises(ConfigError, match=r"input s3://bucket/videos: reading s3:// needs .*pip install 'mugv\[s3\]'"):
            read_inputs("s3://bucket/videos")
    with pytest.raises(ConfigError, match="credentials in a URL are refused"):
        read_inputs("memory://user:password@videos/")


def test_credentials_in_the_config_are_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"run.storage_options.s3.client_kwargs.aws_secret_access_key looks like a credential"):
        curate_config("--run.storage_options.s3.client_kwargs.aws_secret_access_key=abc")
    code = main(["curate", str(tmp_path), "--out", str(tmp_path / "out"), "--run.storage_options.gs.token=abc"])
    assert code == 2 and "run.storage_options.gs.token looks like a credential" in capsys.readouterr().err
    cfg = curate_config("--run.storage_options.s3.anon=true", "--run.storage_options.s3.endpoint_url=http://minio:9000")
    assert cfg.run.storage_options == {"s3": {"anon": True, "endpoint_url": "http://minio:9000"}}
    with pytest.raises(ConfigError, match="run.storage_options.nosuch: unknown protocol 'nosuch://'"):
        curate_config("--run.storage_options.nosuch.anon=true")


def test_a_remote_file_that_vanished_after_listing_is_a_row(store):
    _, url = store
    item = InputItem(f"{url}/videos/a.mp4", name="videos/a.mp4")
    listed = video_id(item)
    item.id = listed
    fsspec.filesystem("memory").rm(f"{url}/videos/a.mp4".removeprefix("memory:/"))
    [row] = curate_video(item, curate_config())
    assert (row["video_id"], row["path"], row["status"], row["reason"]) == (listed, item.path, "rejected", "missing_file")
