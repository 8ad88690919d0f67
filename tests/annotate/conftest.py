"""Tiny campaigns of tiny clips, and a real uvicorn server on a free local port."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mugv.annotate.campaign import Annotator, CampaignFile, Video, save_campaign
from mugv.annotate.storage import AnswerStore
from mugv.video.writer import write_mp4


def make_clip(path: Path, speed: int, colour: tuple[int, int, int], frames: int = 8, fps: float = 8.0,
              size: int = 32) -> Path:
    """A square of `colour` moving `speed` pixels per frame on grey."""
    video = np.full((frames, size, size, 3), 90, np.uint8)
    for t in range(frames):
        x = (4 + speed * t) % (size - 8)
        video[t, 12:20, x:x + 8] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(path, video, fps=fps)
    return path


def build_campaign(root: Path, mode: str = "pairwise", prompts: int = 3, models: tuple[str, ...] = ("m1", "m2"),
                   annotators: int = 3, labels_per_item: int = 2, image: bool = False, aspects=None, **extra):
    """One clip per (prompt, model); model i moves i+1 pixels a frame. Returns the loaded campaign."""
    clip_cache: dict[int, Path] = {}
    videos = []
    for p in range(prompts):
        for i, model in enumerate(models):
            if i not in clip_cache:
                clip_cache[i] = make_clip(root / "clips" / f"{model}.mp4", speed=i + 1, colour=(240, 220, 40))
            image_path = ""
            if image:
                from PIL import Image

                img = root / "images" / f"p{p}.png"
                img.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((32, 32, 3), 30 * p, np.uint8)).save(img)
                image_path = f"images/p{p}.png"
            videos.append(Video(id=f"{model}.p{p}", path=f"clips/{model}.mp4", prompt=f"a square moving, take {p}",
                                prompt_id=f"p{p}", model=model, seed=0, image=image_path))
    spec = CampaignFile(name="test", mode=mode, labels_per_item=labels_per_item, lead_token="lead-token-0123",
                        annotators=[Annotator(name=f"ann{i}", token=f"token-ann-{i:04d}") for i in range(annotators)],
                        videos=videos, **extra)
    if aspects is not None:
        spec.aspects = aspects
    return save_campaign(spec, root / "campaign.toml")


class LiveServer:
    def __init__(self, campaign, db: Path):
        from mugv.annotate.server import make_server

        self.store = AnswerStore(db)
        self.server, self.sock = make_server(campaign, self.store, "127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server():
    @contextlib.contextmanager
    def start(campaign, db: Path | None = None):
        with LiveServer(campaign, db or campaign.default_db()) as server:
            yield server

    return start


def http(method: str, url: str, body=None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                         **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
