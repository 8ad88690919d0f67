"""The web app: a thin FastAPI layer over campaign, assignment, storage and statistics.

URLs carry the annotator's secret token (`/a/<token>/`); everything an annotator can reach is
derived from it: their next item, their own answers, and media under per-annotator opaque keys.
No request path is ever joined onto the filesystem: media keys and static names are looked up in
tables built from the campaign and the package, so no path can escape them.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from mugv.annotate import assign
from mugv.annotate.campaign import ASPECTS, Campaign, Item
from mugv.annotate.storage import AnswerStore

STATIC = {"annotate.js": "text/javascript", "annotate.css": "text/css"}


class _Media:
    """Per-annotator opaque keys for every video and image of the campaign."""

    def __init__(self, campaign: Campaign):
        self.campaign = campaign
        self._tables: dict[str, dict[str, Path]] = {}
        self._fps: dict[str, float] = {}
        self._lock = threading.Lock()

    def key(self, token: str, kind: str, video_id: str) -> str:
        return hashlib.sha256(f"{token}|{kind}|{video_id}".encode()).hexdigest()[:24]

    def table(self, token: str) -> dict[str, Path]:
        with self._lock:
            if token not in self._tables:
                table = {}
                for vid in self.campaign.videos:
                    table[self.key(token, "video", vid)] = self.campaign.video_path(vid)
                    image = self.campaign.image_path(vid)
                    if image is not None:
                        table[self.key(token, "image", vid)] = image
                self._tables[token] = table
            return self._tables[token]

    def fps(self, video_id: str) -> float:
        if video_id not in self._fps:
            from mugv.video.reader import probe

            self._fps[video_id] = probe(self.campaign.video_path(video_id)).fps or 30.0
        return self._fps[video_id]


def create_app(campaign: Campaign, store: AnswerStore) -> FastAPI:
    app = FastAPI(title=f"mugv annotate: {campaign.spec.name}", docs_url=None, redoc_url=None, openapi_url=None)
    media = _Media(campaign)
    package = resources.files("mugv.annotate")

    def annotator(token: str) -> str:
        name = campaign.annotator_by_token.get(token)
        if name is None:
            raise HTTPException(404, "unknown annotator link")
        return name

    def item_json(token: str, name: str, item: Item) -> dict:
        shown = assign.screen_videos(campaign, name, item)
        return {
            "item": campaign.item_key(item),
            "mode": campaign.mode,
            "prompt": item.prompt,
            "image": f"media/{media.key(token, 'image', item.image)}" if item.image else None,
            "videos": [f"media/{media.key(token, 'video', v)}" for v in shown],
            "fps": media.fps(shown[0]),
            "aspects": [{"key": a, "label": ASPECTS[a]} for a in campaign.spec.aspects],
            "tags": campaign.spec.defect_tags,
            "require_full_play": campaign.spec.require_full_play,
        }

    def next_json(token: str, name: str) -> dict:
        item, progress = assign.queue(campaign, store, name)
        out = {"annotator": name, "campaign": campaign.spec.name, "instructions": campaign.spec.instructions,
               "progress": progress}
        if item is None:
            return {**out, "done": True}
        return {**out, "done": False, **item_json(token, name, item)}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return "<!doctype html><title>mugv annotate</title><p>Open the personal link your lead gave you.</p>"

    @app.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(404)
        return Response(package.joinpath("static", name).read_bytes(), media_type=STATIC[name])

    @app.get("/a/{token}/", response_class=HTMLResponse)
    def page(token: str) -> str:
        annotator(token)
        return package.joinpath("templates/annotate.html").read_text()

    @app.get("/a/{token}/api/next")
    def api_next(token: str) -> dict:
        return next_json(token, annotator(token))

    @app.post("/a/{token}/api/answer")
    async def api_answer(token: str, request: Request) -> JSONResponse:
        name = annotator(token)
        payload = await _json_object(request)
        try:
            answer = assign.build_answer(campaign, name, payload)
        except assign.AnswerError as exc:
            raise HTTPException(400, str(exc)) from None
        recorded = await run_in_threadpool(store.record, answer)
        out = {"recorded": recorded, "item": campaign.item_key(campaign.item_by_id[answer.item])}
        if campaign.mode == "sidebyside":
            out["reveal"] = {"left": _shown_name(campaign, answer.left_video),
                             "right": _shown_name(campaign, answer.right_video)}
        return JSONResponse(out)

    @app.post("/a/{token}/api/undo")
    async def api_undo(token: str, request: Request) -> dict:
        name = annotator(token)
        item = campaign.item_by_key.get(str((await _json_object(request)).get("item", "")))
        if item is None:
            raise HTTPException(400, "unknown item")
        return {"withdrawn": await run_in_threadpool(store.withdraw, name, item.id)}

    @app.get("/a/{token}/api/mine")
    def api_mine(token: str) -> dict:
        name = annotator(token)
        mine = store.answers(annotator=name)
        return {"annotator": name, "answers": [{"item": campaign.item_key(campaign.item_by_id[a.item]), "screen": a.screen, "grade": a.grade, "tags": a.tags,
                                                "created_at": a.created_at} for a in mine]}

    @app.get("/a/{token}/media/{key}")
    def api_media(token: str, key: str) -> FileResponse:
        annotator(token)
        path = media.table(token).get(key)
        if path is None:
            raise HTTPException(404)
        kind = "video/mp4" if path.suffix.lower() == ".mp4" else None
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=3600"},
                            content_disposition_type="inline", filename="clip" + path.suffix)

    def lead(token: str) -> None:
        if not campaign.spec.lead_token or token != campaign.spec.lead_token:
            raise HTTPException(404)

    def figures() -> dict:
        from mugv.annotate import stats  # scipy loads only when a lead opens the page

        return stats.compute(campaign, store.answers(), rounds=500)

    @app.get("/lead/{token}/stats", response_class=HTMLResponse)
    def stats_page(token: str) -> str:
        from mugv.annotate import report

        lead(token)
        return report.render_html(figures())

    @app.get("/lead/{token}/stats.json")
    def stats_json(token: str) -> dict:
        lead(token)
        return figures()

    return app


async def _json_object(request: Request) -> dict:
    try:
        payload = await request.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return payload


def _shown_name(campaign: Campaign, video_id: str) -> str:
    video = campaign.videos[video_id]
    return f"{video.model or 'unnamed'} ({video.degradation} copy, a gold check)" if video.degradation else video.model


def bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def urls(campaign: Campaign, host: str, port: int) -> dict[str, str]:
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    out = {a.name: f"{base}/a/{a.token}/" for a in campaign.spec.annotators}
    if campaign.spec.lead_token:
        out["(stats)"] = f"{base}/lead/{campaign.spec.lead_token}/stats"
    return out


def make_server(campaign: Campaign, store: AnswerStore, host: str = "127.0.0.1", port: int = 8765):
    """A uvicorn server for the app and its bound socket (port 0 picks a free port)."""
    import uvicorn

    sock = bind(host, port)
    config = uvicorn.Config(create_app(campaign, store), log_level="warning", access_log=False)
    return uvicorn.Server(config), sock
