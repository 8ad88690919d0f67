"""Comparing a converted checkpoint with the keys and shapes a model expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mugv.models.dit.adapters.names import CheckpointLayoutError
from mugv.models.load_report import LoadReport


def dit_report(layout: str) -> LoadReport:
    return LoadReport(layout=layout, error=CheckpointLayoutError)


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
    report = dit_report(layout)
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
