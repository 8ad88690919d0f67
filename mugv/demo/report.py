"""The demo's report.html: what each stage did, with its figures, curves and videos."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.3rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.6rem 0; } td, th { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 1rem; } figure { margin: 0; width: 210px; }
figure video { width: 200px; image-rendering: pixelated; background: #000; }
figure img.strip { width: 200px; image-rendering: pixelated; display: block; margin-top: 2px; }
figcaption { font-size: 0.8rem; } .ok { color: #1a7f37; } .bad { color: #c62828; } .muted { color: #777; }
"""


@dataclass
class Video:
    path: Path
    caption: str
    note: str = ""
    ok: bool | None = None
    strip: Path | None = None  # a still of some frames side by side, shown under the video


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[tuple[list[str], list[list[object]]]] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    videos: list[Video] = field(default_factory=list)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def write_report(path: Path, title: str, subtitle: str, sections: list[Section]) -> Path:
    """Write a self-contained page whose media links are relative to its folder."""
    base = path.parent

    def rel(p: Path) -> str:
        return html.escape(os.path.relpath(p, base))

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='muted'>{html.escape(subtitle)}</p>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        for header, rows in section.tables:
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            parts.extend("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
            parts.append("</table>")
        for image in section.images:
            parts.append(f"<p><img src='{rel(image)}' alt='{html.escape(image.stem)}' style='max-width:100%'></p>")
        if section.videos:
            parts.append("<div class='grid'>")
            for video in section.videos:
                mark = "" if video.ok is None else ("<span class='ok'>✓</span> " if video.ok else "<span class='bad'>✗</span> ")
                parts.append(
                    f"<figure><video src='{rel(video.path)}' autoplay loop muted playsinline controls></video>"
                    + (f"<img class='strip' src='{rel(video.strip)}' alt='frames of {html.escape(video.path.stem)}'>"
                       if video.strip else "")
                    + f"<figcaption>{mark}{html.escape(video.caption)}"
                    + (f"<br><span class='muted'>{html.escape(video.note)}</span>" if video.note else "")
                    + "</figcaption></figure>"
                )
            parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("\n".join(parts))
    return path
