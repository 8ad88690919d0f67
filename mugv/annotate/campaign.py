"""A labelling campaign: one TOML file naming the videos, the annotators and what to ask.

The file is read with mugv's typed-config machinery, so a misspelt key is an error naming it.
Items (what one answer is about) are derived from the file, never stored in it: in `grade` mode one
item per video; in `pairwise` mode every pair of videos sharing a prompt (or the pairs listed);
in `sidebyside` mode every pair of models on each (prompt, seed), which is a balanced design.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomli_w

from mugv.config import ConfigError, from_dict, to_dict, to_toml

ASPECTS = {
    "overall": "Overall",
    "visual": "Visual quality",
    "motion": "Motion quality",
    "text": "Text alignment",
}
GRADES = ("fail", "pass", "high_quality")
PAIR_ANSWERS = ("a", "b", "tie", "both_bad")  # canonical: a/b are the item's first/second video
DEFECT_TAGS = [
    "deformation",
    "identity drift",
    "flicker",
    "unnatural motion",
    "frozen or static",
    "physics violation",
    "prompt mismatch",
    "first frame lost",
    "blur or noise",
    "colour shift",
    "text or watermark",
    "cut or transition",
    "other",
]
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,128}$")
_VIDEO_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass
class Video:
    id: str = ""
    path: str = ""  # relative to the campaign file's folder, or absolute
    prompt: str = ""
    prompt_id: str = ""  # videos with the same prompt_id are compared; default: a hash of the prompt
    model: str = ""
    seed: int = 0
    image: str = ""  # the conditioning image of an I2V clip, shown beside the prompt
    degraded_from: str = ""  # gold copies: the clean video this one was degraded from
    degradation: str = ""


@dataclass
class Annotator:
    name: str = ""
    token: str = ""  # the secret part of the annotator's URL


@dataclass
class Gold:
    """An item with a known answer: two video ids (pairwise modes) or one (grade mode)."""

    videos: list[str] = field(default_factory=list)
    expected: str = ""  # pairwise: the better video's id, or "tie"; grade: fail / pass / high_quality


@dataclass
class CampaignFile:
    name: str = ""
    mode: Literal["pairwise", "grade", "sidebyside"] = "pairwise"
    labels_per_item: int = 3
    seed: int = 0
    instructions: str = ""
    aspects: list[str] = field(default_factory=lambda: list(ASPECTS))
    defect_tags: list[str] = field(default_factory=lambda: list(DEFECT_TAGS))
    require_full_play: bool = True  # votes open once both clips have played to the end
    lead_token: str = ""  # opens the stats page
    annotators: list[Annotator] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)  # pairwise mode: explicit pairs (default: all per prompt)
    gold: list[Gold] = field(default_factory=list)


@dataclass(frozen=True)
class Item:
    id: str
    videos: tuple[str, ...]  # canonical order: answers say "a" / "b" for videos[0] / videos[1]
    prompt: str
    prompt_id: str
    image: str  # the id of the video whose conditioning image is shown, or ""
    gold_expected: str = ""  # canonical: a / b / tie (pairs) or a grade; empty for ordinary items


class Campaign:
    """A loaded, checked campaign: its file, its folder, its items and its identity hash."""

    def __init__(self, spec: CampaignFile, path: Path):
        self.spec = spec
        self.path = path
        self.root = path.parent
        self.videos = {v.id: v for v in spec.videos}
        self.items = _build_items(spec, self.videos)
        self.item_by_id = {item.id: item for item in self.items}
        self.annotator_by_token = {a.token: a.name for a in spec.annotators}
        identity = to_dict(spec)
        identity.pop("annotators", None)
        identity.pop("lead_token", None)
        self.hash = hashlib.sha256(tomli_w.dumps(identity).encode()).hexdigest()[:16]
        self.item_by_key = {self.item_key(item): item for item in self.items}
        self.orders: dict[str, list[Item]] = {}  # per-annotator item order, filled by assign.annotator_order

    def item_key(self, item: Item) -> str:
        """The opaque name the browser sees for an item (item ids contain video ids, which may name models)."""
        return "i" + hashlib.sha256(f"{self.hash}|{item.id}".encode()).hexdigest()[:16]

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def is_pairwise(self) -> bool:
        return self.spec.mode != "grade"

    def video_path(self, video_id: str) -> Path:
        return _resolve(self.root, self.videos[video_id].path)

    def image_path(self, video_id: str) -> Path | None:
        image = self.videos[video_id].image
        return _resolve(self.root, image) if image else None

    def default_db(self) -> Path:
        return self.path.with_suffix(".sqlite")


def _resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def prompt_key(prompt: str) -> str:
    return "p" + hashlib.sha256(prompt.encode()).hexdigest()[:10]


def load_campaign(path: str | Path) -> Campaign:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"campaign file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        spec = from_dict(CampaignFile, data)
        _check(spec, path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Campaign(spec, path.resolve())


def save_campaign(spec: CampaignFile, path: str | Path) -> Campaign:
    """Check `spec`, write it as TOML and return it loaded."""
    path = Path(path)
    _check(spec, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(spec))
    return load_campaign(path)


def new_token() -> str:
    return secrets.token_urlsafe(18)


def _check(spec: CampaignFile, root: Path) -> None:
    if spec.labels_per_item < 1:
        raise ConfigError(f"labels_per_item = {spec.labels_per_item} must be at least 1")
    unknown = [a for a in spec.aspects if a not in ASPECTS]
    if unknown or not spec.aspects or spec.aspects[0] != "overall" or len(set(spec.aspects)) != len(spec.aspects):
        raise ConfigError(f"aspects = {spec.aspects!r}: must start with 'overall' and use only {', '.join(ASPECTS)}")
    if not spec.annotators:
        raise ConfigError("no [[annotators]]: name at least one annotator with a token")
    names, tokens = set(), set()
    for i, a in enumerate(spec.annotators):
        if not a.name or a.name in names:
            raise ConfigError(f"annotators[{i}].name = {a.name!r} is empty or repeated")
        if not _TOKEN.match(a.token) or a.token in tokens or a.token == spec.lead_token:
            raise ConfigError(f"annotators[{i}].token for {a.name!r} must be a unique URL-safe string of 8-128 "
                              "characters (mugv annotate new makes them)")
        names.add(a.name)
        tokens.add(a.token)
    if spec.lead_token and not _TOKEN.match(spec.lead_token):
        raise ConfigError("lead_token must be a URL-safe string of 8-128 characters")
    if not spec.videos:
        raise ConfigError("no [[videos]]")
    ids = set()
    for i, v in enumerate(spec.videos):
        if not _VIDEO_ID.match(v.id) or v.id in ids:
            raise ConfigError(f"videos[{i}].id = {v.id!r} is empty, repeated or has characters other than "
                              "letters, digits and _ . : -")
        ids.add(v.id)
        if not _resolve(root, v.path).is_file():
            raise ConfigError(f"videos[{i}].path = {v.path!r}: no such file")
        if v.image and not _resolve(root, v.image).is_file():
            raise ConfigError(f"videos[{i}].image = {v.image!r}: no such file")
        if not v.prompt_id:
            v.prompt_id = prompt_key(v.prompt)
    for i, pair in enumerate(spec.pairs):
        if spec.mode != "pairwise":
            raise ConfigError("pairs are only used in pairwise mode")
        if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= ids:
            raise ConfigError(f"pairs[{i}] = {pair!r} must name two different known video ids")
    want = 1 if spec.mode == "grade" else 2
    for i, g in enumerate(spec.gold):
        if len(g.videos) != want or not set(g.videos) <= ids or len(set(g.videos)) != want:
            raise ConfigError(f"gold[{i}].videos = {g.videos!r} must name {want} different known video id(s)")
        allowed = GRADES if spec.mode == "grade" else (*g.videos, "tie")
        if g.expected not in allowed:
            raise ConfigError(f"gold[{i}].expected = {g.expected!r} is not one of {', '.join(allowed)}")


def _build_items(spec: CampaignFile, videos: dict[str, Video]) -> list[Item]:
    items: list[Item] = []
    gold_ids = {vid for g in spec.gold for vid in g.videos if videos[vid].degraded_from}
    clean = [v for v in spec.videos if v.id not in gold_ids]

    def make(ids: tuple[str, ...], expected: str = "") -> Item:
        first = videos[ids[0]]
        image_owner = next((i for i in ids if videos[i].image), "")
        kind = "gold" if expected else "item"
        return Item(id=f"{kind}:{'|'.join(ids)}", videos=ids, prompt=first.prompt, prompt_id=first.prompt_id,
                    image=image_owner, gold_expected=expected)

    if spec.mode == "grade":
        items = [make((v.id,)) for v in clean]
    elif spec.mode == "pairwise" and spec.pairs:
        items = [make(tuple(sorted(p))) for p in spec.pairs]
    else:
        groups: dict[tuple, list[Video]] = {}
        for v in clean:
            key = (v.prompt_id,) if spec.mode == "pairwise" else (v.prompt_id, v.seed)
            groups.setdefault(key, []).append(v)
        for group in groups.values():
            for x, y in itertools.combinations(sorted(group, key=lambda v: v.id), 2):
                if spec.mode == "sidebyside" and x.model == y.model:
                    continue
                items.append(make((x.id, y.id)))
    for g in spec.gold:
        ids = tuple(sorted(g.videos))
        if spec.mode == "grade":
            expected = g.expected
        else:
            expected = "tie" if g.expected == "tie" else "ab"[ids.index(g.expected)]
        items.append(make(ids, expected))
    seen = set()
    unique = []
    for item in items:
        if item.id not in seen:
            seen.add(item.id)
            unique.append(item)
    if not unique:
        raise ConfigError("the campaign has no items: pairwise modes need at least two videos per prompt "
                          "(sidebyside: two models per prompt and seed)")
    return unique
