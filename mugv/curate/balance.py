"""Stage: entity extraction from captions into a small ontology, and stratified sampling of the
kept clips toward a target category mix.

Entities are found by whole-word matching of each category's terms (singular or plural) in the
caption; a clip's category is the one with most matched terms (`other` when none match).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from mugv.config import ConfigError

ONTOLOGY: dict[str, tuple[str, ...]] = {
    "people": (
        "person",
        "man",
        "woman",
        "child",
        "boy",
        "girl",
        "people",
        "crowd",
        "player",
        "dancer",
        "face",
        "baby",
        "worker",
        "rider",
        "cyclist",
        "athlete",
    ),
    "animals": (
        "animal",
        "dog",
        "cat",
        "bird",
        "horse",
        "cow",
        "fish",
        "rabbit",
        "bunny",
        "squirrel",
        "butterfly",
        "insect",
        "deer",
        "sheep",
        "lion",
        "elephant",
        "monkey",
    ),
    "vehicles": (
        "car",
        "truck",
        "bus",
        "train",
        "bicycle",
        "bike",
        "motorcycle",
        "boat",
        "ship",
        "airplane",
        "plane",
        "vehicle",
        "tram",
        "taxi",
    ),
    "nature": (
        "tree",
        "forest",
        "mountain",
        "river",
        "lake",
        "sea",
        "ocean",
        "beach",
        "sky",
        "cloud",
        "flower",
        "grass",
        "field",
        "snow",
        "waterfall",
        "sunset",
        "meadow",
    ),
    "urban": ("city", "street", "building", "road", "bridge", "traffic", "skyline", "shop", "market", "town", "highway"),
    "indoor": ("room", "kitchen", "office", "table", "chair", "sofa", "bed", "desk", "window", "wall", "studio", "restaurant"),
    "food": ("food", "dish", "meal", "fruit", "vegetable", "bread", "cake", "coffee", "drink", "cooking", "pizza"),
    "objects": ("phone", "computer", "screen", "product", "bottle", "box", "bag", "shoe", "dress", "toy", "book", "watch"),
}


@dataclass
class BalanceConfig:
    # "category=share" items, e.g. ["people=0.4", "nature=0.3", "other=0.3"]; empty: no sampling
    mix: list[str] = field(default_factory=list)
    max_clips: int = 0  # size of the sampled set; 0: as many as the mix allows
    seed: int = 0

    def validate(self) -> None:
        shares = self.target_shares()
        unknown = set(shares) - set(ONTOLOGY) - {"other"}
        if unknown:
            raise ConfigError(f"balance.mix names unknown categories {sorted(unknown)}; known: {sorted(ONTOLOGY)} and 'other'")
        if self.max_clips < 0:
            raise ConfigError("balance.max_clips must be >= 0")

    def target_shares(self) -> dict[str, float]:
        shares = {}
        for item in self.mix:
            name, sep, value = item.partition("=")
            try:
                shares[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(f"balance.mix item {item!r} must look like 'category=0.3'") from None
            if not sep or shares[name.strip()] < 0:
                raise ConfigError(f"balance.mix item {item!r} must look like 'category=0.3'")
        total = sum(shares.values())
        if shares and total <= 0:
            raise ConfigError("balance.mix shares must add up to more than 0")
        return {k: v / total for k, v in shares.items()}


_PATTERNS = {
    category: re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")(s|es)?\b", re.IGNORECASE)
    for category, terms in ONTOLOGY.items()
}


def extract_entities(caption: str) -> tuple[list[str], str]:
    """(sorted matched terms as "category:term", the dominant category or `other`)."""
    counts: dict[str, int] = {}
    entities = set()
    for category, pattern in _PATTERNS.items():
        for match in pattern.finditer(caption):
            entities.add(f"{category}:{match.group(1).lower()}")
            counts[category] = counts.get(category, 0) + 1
    primary = max(counts, key=lambda c: (counts[c], -list(ONTOLOGY).index(c))) if counts else "other"
    return sorted(entities), primary


def stratified_sample(categories: list[str], quality: np.ndarray, cfg: BalanceConfig) -> np.ndarray:
    """Boolean mask of items chosen so the categories follow the target mix as closely as the
    supply allows, taking the best-quality items of each category (ties broken at random).

    The set is the largest one whose every category can meet its share (capped by `max_clips`);
    categories outside the mix are not sampled."""
    shares = cfg.target_shares()
    chosen = np.zeros(len(categories), bool)
    if not shares:
        return ~chosen
    supply = {c: sum(1 for x in categories if x == c) for c in shares}
    total = min((supply[c] / s for c, s in shares.items() if s > 0), default=0.0)
    total = int(min(total, cfg.max_clips) if cfg.max_clips else total)
    rng = np.random.default_rng(cfg.seed)
    jitter = rng.random(len(categories)) * 1e-6
    for category, share in shares.items():
        members = np.array([i for i, c in enumerate(categories) if c == category], dtype=np.int64)
        take = min(len(members), int(round(share * total)))
        if take:
            best = members[np.argsort(-(quality[members] + jitter[members]))[:take]]
            chosen[best] = True
    return chosen
