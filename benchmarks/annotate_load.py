"""`mugv annotate serve` under load and under a kill -9, against the answer store alone.

Load: a server process (`python -m mugv annotate serve`) and 20 client threads, each labelling
500 items over HTTP (fetch the next item, post the answer, post it again as a retrying client
would). Every acknowledged answer must be in the database exactly once. Baseline, in the same run:
the same answers committed straight into an AnswerStore from one thread (same SQLite settings: WAL,
synchronous=FULL, one transaction per answer). The ratio is HTTP answers/s over direct answers/s.

Crash: 4 clients post answers; the server gets SIGKILL mid-stream; every answer a client got a 200
for must be in the database, and a restarted server resumes each annotator at an unanswered item.

    python benchmarks/annotate_load.py [--clients 20] [--answers 500] [--kills 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mugv.annotate import assign
from mugv.annotate.campaign import Annotator, CampaignFile, Video, save_campaign
from mugv.annotate.storage import AnswerStore
from mugv.video.writer import write_mp4


def campaign_of(root: Path, items: int, annotators: int):
    frames = np.zeros((8, 32, 32, 3), np.uint8)
    frames[:, 8:24, 8:24] = 200
    write_mp4(root / "clip.mp4", frames, fps=8)
    videos = [Video(id=f"v{i}.{side}", path="clip.mp4", prompt=f"prompt {i}", prompt_id=f"p{i}")
              for i in range(items) for side in "ab"]
    spec = CampaignFile(name="load", mode="pairwise", labels_per_item=annotators, aspects=["overall"],
                        annotators=[Annotator(name=f"a{i}", token=f"token-{i:06d}") for i in range(annotators)],
                        videos=videos)
    return save_campaign(spec, root / "load.toml")


def call(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


def serve(campaign_path: Path, db: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "mugv", "annotate", "serve", str(campaign_path), "--port", "0",
                             "--db", str(db)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        match = re.search(r"(http://127\.0\.0\.1:\d+)/a/", line)
        if match:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, match.group(1)
    raise RuntimeError("the server printed no URL")


def label(base: str, token: str, stop: threading.Event | None = None, limit: int | None = None,
          acknowledged: list | None = None, repeats: int = 2) -> int:
    done = 0
    while (limit is None or done < limit) and not (stop and stop.is_set()):
        try:
            _, item = call(f"{base}/a/{token}/api/next")
            if item["done"]:
                break
            for _ in range(repeats):
                status, _ = call(f"{base}/a/{token}/api/answer",
                                 {"item": item["item"], "choices": {"overall": "left"}, "time_ms": 900})
        except OSError:
            if stop is None:
                raise
            break
        done += 1
        if acknowledged is not None:
            acknowledged.append((token, item["item"]))
    return done


def load(root: Path, clients: int, answers: int) -> None:
    campaign = campaign_of(root, answers, clients)
    direct = AnswerStore(root / "direct.sqlite")
    start = time.perf_counter()
    for annotator in campaign.spec.annotators:
        for item in campaign.items:
            payload = {"item": campaign.item_key(item), "choices": {"overall": "left"}}
            direct.record(assign.build_answer(campaign, annotator.name, payload))
    direct_rate = clients * answers / (time.perf_counter() - start)
    proc, base = serve(campaign.path, root / "http.sqlite")
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        acknowledged = sum(pool.map(lambda i: label(base, f"token-{i:06d}", limit=answers), range(clients)))
    http_rate = acknowledged / (time.perf_counter() - start)
    proc.terminate()
    proc.wait(timeout=30)
    stored = AnswerStore(root / "http.sqlite").answers()
    unique = len({(a.annotator, a.item) for a in stored})
    print(f"load: {clients} clients x {answers} answers (each posted twice): acknowledged {acknowledged}, "
          f"stored {len(stored)}, unique {unique}, lost {acknowledged - unique}, duplicated {len(stored) - unique}")
    print(f"  HTTP {http_rate:.0f} answers/s vs AnswerStore alone {direct_rate:.0f} answers/s: "
          f"ratio {http_rate / direct_rate:.2f}")


def crash(root: Path, kills: int) -> None:
    campaign = campaign_of(root, 300, 4)
    db = root / "crash.sqlite"
    names = {a.token: a.name for a in campaign.spec.annotators}
    for round_ in range(kills):
        proc, base = serve(campaign.path, db)
        acknowledged: list = []
        stop = threading.Event()
        threads = [threading.Thread(target=label, args=(base, token, stop, None, acknowledged, 1)) for token in names]
        for t in threads:
            t.start()
        while len(acknowledged) < 50:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
        stored = {(a.annotator, campaign.item_key(campaign.item_by_id[a.item])) for a in AnswerStore(db).answers()}
        lost = {(names[t], k) for t, k in acknowledged} - stored
        print(f"kill -9 #{round_ + 1}: {len(acknowledged)} answers acknowledged this round, {len(stored)} stored in "
              f"total, {len(lost)} acknowledged answers lost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--answers", type=int, default=500)
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        load(Path(tmp), args.clients, args.answers)
        crash(Path(tmp), args.kills)


if __name__ == "__main__":
    main()
