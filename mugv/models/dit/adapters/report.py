"""Comparing a converted checkpoint with the keys and shapes a model expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mugv.models.dit.adapters.names import CheckpointLayoutError


@dataclass
class LoadReport:
    """What comparing a converted checkpoint with the expected keys and shapes found."""

    layout: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: name -> (expected shape, checkpoint shape)
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    #: expected keys the layout is known not to carry; they keep their initial values
    absent_in_source_ok: list[str] = field(default_factory=list)
    #: source keys that carry no weights and were dropped on purpose (e.g. TE ``_extra_state``)
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatches)

    def format(self) -> str:
        lines = [f"checkpoint layout {self.layout!r}:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}):")
            lines += [f"    {k}" for k in self.missing]
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}):")
            lines += [f"    {k}" for k in self.unexpected]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches ({len(self.shape_mismatches)}), expected vs found:")
            lines += [f"    {k}: {tuple(e)} vs {tuple(f)}" for k, (e, f) in self.shape_mismatches.items()]
        if self.absent_in_source_ok:
            lines.append("  absent from the source, known for this layout, kept from init:")
            lines += [f"    {k}" for k in self.absent_in_source_ok]
        if self.dropped:
            lines.append(f"  dropped (carry no weights): {len(self.dropped)} keys")
        lines += [f"  note: {n}" for n in self.notes]
        if len(lines) == 1:
            lines.append("  all keys and shapes match")
        return "\n".join(lines)

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise CheckpointLayoutError(self.format())

    def __str__(self) -> str:
        return self.format()


def compare_state_dicts(
    found: Mapping[str, Any],
    expected: Mapping[str, Any],
    *,
    layout: str,
    known_absent: Iterable[str] = (),
) -> LoadReport:
    """Compare names and shapes of ``found`` (converted to our names) against ``expected``.

    Values may be tensors or anything with a ``.shape`` (meta tensors work).
    """
    absent_ok = frozenset(known_absent)
    report = LoadReport(layout=layout)
    for name in expected:
        if name not in found:
            (report.absent_in_source_ok if name in absent_ok else report.missing).append(name)
    report.unexpected = [n for n in found if n not in expected]
    for name, value in found.items():
        if name in expected:
            e, f = tuple(expected[name].shape), tuple(value.shape)
            if e != f:
                report.shape_mismatches[name] = (e, f)
    dtypes_found = {str(v.dtype) for v in found.values() if hasattr(v, "dtype")}
    dtypes_expected = {str(v.dtype) for v in expected.values() if hasattr(v, "dtype")}
    if dtypes_found and dtypes_expected and dtypes_found != dtypes_expected:
        report.notes.append(
            f"dtypes {sorted(dtypes_found)} in the checkpoint, {sorted(dtypes_expected)} expected;"
            " values are cast on load"
        )
    return report
