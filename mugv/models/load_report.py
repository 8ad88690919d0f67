"""What loading a checkpoint into a model found, for every model family: keys missing,
unexpected or mis-shaped (errors), and keys absent or dropped on purpose (logged)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mugv.errors import MugvError


@dataclass
class LoadReport:
    layout: str
    subject: str = "checkpoint"  # what was loaded, as the message names it
    error: type[Exception] = field(default=MugvError, repr=False)  # what `raise_for_errors` raises
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: name -> (expected shape, checkpoint shape)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    #: expected keys the layout is known not to carry; they keep their initial values
    absent_in_source_ok: list[str] = field(default_factory=list)
    #: source keys dropped on purpose, and why (e.g. Transformer-Engine `_extra_state`: no weights)
    dropped: list[str] = field(default_factory=list)
    dropped_why: str = "carry no weights"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def format(self) -> str:
        lines = [f"{self.subject} layout {self.layout!r}:"]
        for title, names in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
            if names:
                lines.append(f"  {title} ({len(names)}):")
                lines += [f"    {k}" for k in names]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches ({len(self.shape_mismatches)}), expected vs found:")
            lines += [f"    {k}: {tuple(e)} vs {tuple(f)}" for k, (e, f) in self.shape_mismatches.items()]
        if self.absent_in_source_ok:
            lines.append("  absent from the source, known for this layout, kept from init:")
            lines += [f"    {k}" for k in self.absent_in_source_ok]
        if self.dropped:
            shown = ", ".join(self.dropped[:8]) + (", ..." if len(self.dropped) > 8 else "")
            lines.append(f"  dropped ({self.dropped_why}): {len(self.dropped)} keys: {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        if len(lines) == 1:
            lines.append("  all keys and shapes match")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise self.error(self.format())

    def __str__(self) -> str:
        return self.format()
