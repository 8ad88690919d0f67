"""The web app over HTTP: range requests, blinding, isolation between annotators, path traversal,
concurrent clients, and a kill -9 of the server process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mugv.annotate.assign import screen_videos
from mugv.annotate.storage import AnswerStore

from conftest import build_campaign, http

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _answer_for(item: dict, choice: str = "left") -> dict:
    if item["mode"] == "grade":
        return {"item": item["item"], "grade": "pass", "tags": [], "time_ms": 1500}
    return {"item": item["item"], "choices": {a["key"]: choice for a in item["aspects"]}, "time_ms": 1500}


def _next(base: str, token: str) -> dict:
    status, _, body = http("GET", f"{base}/a/{token}/api/next")
    assert status == 200, body
    return json.loads(body)


def test_videos_are_served_with_range_requests(tmp_path, live_server):
    campaign = build_campaign(tmp_path)
    with live_server(campaign) as server:
        item = _next(server.base, "token-ann-0000")
        url = f"{server.base}/a/token-ann-0000/{item['videos'][0]}"
        left = screen_videos(campaign, "ann0", campaign.item_by_key[item["item"]])[0]
        size = campaign.video_path(left).stat().st_size
        status, headers, body = http("GET", url)
        assert status == 200 and len(body) == size and headers["accept-ranges"] == "bytes"
        assert headers["content-type"] == "video/mp4"
        status, headers, body = http("GET", url, headers={"Range": "bytes=100-199"})
        assert status == 206 and len(body) == 100 and headers["content-range"] == f"bytes 100-199/{size}"
        status, headers, body = http("GET", url, headers={"Range": "bytes=-50"})
        assert status == 206 and len(body) == 50


def test_items_are_blind_and_placement_is_random_per_annotator(tmp_path, live_server):
    campaign = build_campaign(tmp_path, mode="sidebyside", prompts=6, image=True, annotators=4, labels_per_item=4)
    with live_server(campaign) as server:
        swaps = set()
        for i in range(4):
            item = _next(server.base, f"token-ann-{i:04d}")
            text = json.dumps(item)
            for secret in ("m1", "m2", "clips", ".mp4", "images/", "p0", "p1"):
                assert secret not in text, (secret, text)
            assert item["image"] and item["prompt"].startswith("a square")
            status, _, body = http("POST", f"{server.base}/a/token-ann-{i:04d}/api/answer", _answer_for(item))
            result = json.loads(body)
            assert status == 200 and result["recorded"]
            assert sorted(result["reveal"].values()) == ["m1", "m2"]  # names only after the vote
            swaps.add(result["reveal"]["left"])
        assert swaps == {"m1", "m2"}  # both placements occur


def test_answers_are_checked_and_never_duplicated(tmp_path, live_server):
    campaign = build_campaign(tmp_path)
    with live_server(campaign) as server:
        base = f"{server.base}/a/token-ann-0000/api"
        item = _next(server.base, "token-ann-0000")
        bad = {"item": item["item"], "choices": {"overall": "left"}}
        status, _, body = http("POST", f"{base}/answer", bad)
        assert status == 400 and b"aspects" in body
        status, _, body = http("POST", f"{base}/answer", {**_answer_for(item), "item": "nope"})
        assert status == 400 and b"unknown item" in body
        for path in ("answer", "undo"):
            assert http("POST", f"{base}/{path}", ["not", "an", "object"])[0] == 400
        for _ in range(3):
            status, _, body = http("POST", f"{base}/answer", _answer_for(item))
            assert status == 200
        assert len(server.store.answers()) == 1
        assert _next(server.base, "token-ann-0000")["item"] != item["item"]  # resumes at the next unfinished item


def test_one_annotator_cannot_read_or_change_another_ones_labels(tmp_path, live_server):
    campaign = build_campaign(tmp_path, prompts=2, annotators=2, labels_per_item=2)
    with live_server(campaign) as server:
        mine = _next(server.base, "token-ann-0000")
        http("POST", f"{server.base}/a/token-ann-0000/api/answer", _answer_for(mine, "left"))
        theirs = _next(server.base, "token-ann-0001")
        # the other annotator answers and tries to undo ann0's answer: only their own can go
        for item in [mine, theirs]:
            http("POST", f"{server.base}/a/token-ann-0001/api/answer", _answer_for(item, "tie"))
        status, _, body = http("POST", f"{server.base}/a/token-ann-0001/api/undo", {"item": mine["item"]})
        assert status == 200 and json.loads(body)["withdrawn"] is True  # their own answer to that item
        rows = {(a.annotator, a.item): a for a in server.store.answers()}
        ann0 = rows[("ann0", campaign.item_by_key[mine["item"]].id)]
        assert set(ann0.screen.values()) == {"left"}
        listed = json.loads(http("GET", f"{server.base}/a/token-ann-0001/api/mine")[2])
        assert listed["annotator"] == "ann1" and all(set(a["screen"].values()) == {"tie"} for a in listed["answers"])
        # another annotator's media keys, unknown tokens and the stats page are closed to annotators
        status, _, _ = http("GET", f"{server.base}/a/token-ann-0001/{mine['videos'][0]}")
        assert status == 404
        assert http("GET", f"{server.base}/a/not-a-token-123/api/next")[0] == 404
        assert http("GET", f"{server.base}/lead/token-ann-0000/stats")[0] == 404
        status, _, body = http("GET", f"{server.base}/lead/lead-token-0123/stats")
        assert status == 200 and b"Agreement" in body


@pytest.mark.parametrize("path", [
    "/a/token-ann-0000/media/../../campaign.toml",
    "/a/token-ann-0000/media/..%2F..%2Fcampaign.toml",
    "/a/token-ann-0000/media/%2e%2e%2fcampaign.toml",
    "/a/token-ann-0000/media/..%5c..%5ccampaign.toml",
    "/a/token-ann-0000/media//etc/passwd",
    "/a/token-ann-0000/media/%2Fetc%2Fpasswd",
    "/static/../campaign.py",
    "/static/..%2Fcampaign.py",
    "/static/%2e%2e%2fserver.py",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/a/..%2F..%2Fetc%2Fpasswd/",
    "/a/token-ann-0000/..%2F..%2Fcampaign.toml",
    "/campaign.toml",
    "/clips/m1.mp4",
])
def test_no_path_reaches_a_file_outside_the_campaign_tables(tmp_path, live_server, path):
    campaign = build_campaign(tmp_path)
    secrets_on_disk = [b"token-ann-0000", b"root:", b"def create_app", b"def _check"]
    with live_server(campaign) as server:
        status, _, body = http("GET", server.base + path)
        assert status in (400, 404, 405), (path, status)
        assert not any(s in body for s in secrets_on_disk)


def _spawn(campaign_path: Path, db: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mugv", "annotate", "serve", str(campaign_path), "--port", "0",
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    for line in proc.stdout:
        match = re.search(r"(http://127\.0\.0\.1:\d+)/a/", line)
        if match:
            base = match.group(1)
            break
        if time.time() > deadline:
            break
    else:
        raise RuntimeError("server printed no URL")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep the pipe drained
    while http("GET", base + "/")[0] != 200:
        time.sleep(0.05)
    return proc, base


def run_clients(base: str, tokens: list[str], answers_each: int, retries: int = 1) -> int:
    """Each client labels `answers_each` items, posting every answer `retries` times (a client retrying)."""

    def client(token: str) -> int:
        acknowledged = 0
        for _ in range(answers_each):
            item = _next(base, token)
            assert not item["done"]
            for _ in range(retries):
                status, _, body = http("POST", f"{base}/a/{token}/api/answer", _answer_for(item))
                assert status == 200, body
            acknowledged += 1
        return acknowledged

    with ThreadPoolExecutor(len(tokens)) as pool:
        return sum(pool.map(client, tokens))


def test_twenty_concurrent_clients_lose_and_duplicate_nothing(tmp_path):
    answers_each = 15  # benchmarks/annotate_load.py runs 20 x 500
    campaign = build_campaign(tmp_path, prompts=answers_each, annotators=20, labels_per_item=20)
    db = tmp_path / "load.sqlite"
    proc, base = _spawn(campaign.path, db)
    try:
        acknowledged = run_clients(base, [f"token-ann-{i:04d}" for i in range(20)], answers_each, retries=2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    answers = AnswerStore(db).answers()
    assert acknowledged == len(answers) == 20 * answers_each
    assert len({(a.annotator, a.item) for a in answers}) == len(answers)
    per_annotator = {}
    for a in answers:
        per_annotator[a.annotator] = per_annotator.get(a.annotator, 0) + 1
    assert set(per_annotator.values()) == {answers_each}


def test_kill_9_loses_no_acknowledged_answer(tmp_path):
    campaign = build_campaign(tmp_path, prompts=200, annotators=4, labels_per_item=4)
    db = tmp_path / "crash.sqlite"
    proc, base = _spawn(campaign.path, db)
    acknowledged: list[tuple[str, str]] = []
    stop = threading.Event()

    def client(token: str) -> None:
        while not stop.is_set():
            try:
                item = _next(base, token)
                status, _, _ = http("POST", f"{base}/a/{token}/api/answer", _answer_for(item))
            except (OSError, AssertionError):
                return
            if status == 200:
                acknowledged.append((token, item["item"]))

    threads = [threading.Thread(target=client, args=(f"token-ann-{i:04d}",)) for i in range(4)]
    for t in threads:
        t.start()
    while len(acknowledged) < 40:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests are in flight
    proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    names = {f"token-ann-{i:04d}": f"ann{i}" for i in range(4)}
    stored = {(a.annotator, campaign.item_key(campaign.item_by_id[a.item])) for a in AnswerStore(db).answers()}
    assert {(names[t], key) for t, key in acknowledged} <= stored
    assert len(stored) <= len(acknowledged) + 4  # at most one unacknowledged commit per client in flight
    # a restarted server resumes every annotator at an item they have not answered
    proc, base = _spawn(campaign.path, db)
    try:
        for token, name in names.items():
            item = _next(base, token)
            assert (name, item["item"]) not in stored
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_binds_localhost_by_default_and_ships_its_own_assets(tmp_path):
    from importlib import resources

    from mugv.annotate.server import make_server, urls

    campaign = build_campaign(tmp_path)
    server, sock = make_server(campaign, AnswerStore(tmp_path / "db.sqlite"), port=0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
        links = urls(campaign, "127.0.0.1", sock.getsockname()[1])
        assert links["ann0"].endswith("/a/token-ann-0000/") and "/lead/lead-token-0123/stats" in links["(stats)"]
    finally:
        sock.close()
    package = resources.files("mugv.annotate")
    for name in ("templates/annotate.html", "templates/stats.html", "static/annotate.js", "static/annotate.css"):
        text = package.joinpath(name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
