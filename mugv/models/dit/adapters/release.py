"""The published MUG-V inference layout (``dit.pt``): the identity on names, plus validation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mugv.models.dit.adapters.names import (
    KNOWN_ABSENT,
    MEGATRON_RULES,
    StateDict,
    _match_ours,
    _Rule,
    _unknown,
    log,
)
from mugv.models.dit.adapters.report import LoadReport, compare_state_dicts, dit_report


def _structural_expected_names(names: Iterable[str]) -> list[str]:
    """Required keys implied by the block indices present (used when no reference is given)."""
    indices = set()
    for name in names:
        hit = _match_ours(name)
        if hit is not None and "i" in hit[1]:
            indices.add(int(hit[1]["i"]))
    depth = max(indices) + 1 if indices else 0
    out: list[str] = []
    for rule in MEGATRON_RULES:
        if not rule.required:
            continue
        for filled in _expand_rule(rule, depth):
            out.append(filled)
    return out


def _expand_rule(rule: _Rule, depth: int) -> list[str]:
    """All concrete names a rule stands for, for a model of ``depth`` blocks."""
    alternatives: dict[str, list[str]] = {}
    for m in re.finditer(r"\(\?P<(\w+)>([^)]*)\)", rule.ours):
        key, body = m.group(1), m.group(2)
        alternatives[key] = [str(i) for i in range(depth)] if key == "i" else body.split("|")
    names = [rule.ours]
    for key, values in alternatives.items():
        pat = re.compile(r"\(\?P<" + key + r">[^)]*\)")
        names = [pat.sub(v, n) for n in names for v in values]
    return [n.replace("\\.", ".") for n in names]




def to_mugv(state_dict: Mapping[str, Tensor], *, keep_null_embedding: bool = False) -> StateDict:
    """Our state dict -> the published inference layout (what MUG-V's ``dit.pt`` loader takes).

    Names are unchanged. ``y_embedder.y_embedding`` is left out unless ``keep_null_embedding``,
    because the reference inference model loads strictly and has no such buffer. Tensors are
    shared, not copied. Unknown keys raise.
    """
    unknown = [k for k in state_dict if _match_ours(k) is None]
    if unknown:
        raise _unknown(unknown, "keys with no place in the MUG-V layout")
    out: StateDict = {}
    for name, tensor in state_dict.items():
        if name in KNOWN_ABSENT["mugv"] and not keep_null_embedding:
            log.info("to_mugv: leaving out %s (the inference layout does not carry it)", name)
            continue
        out[name] = tensor
    return out


def _expected_from_reference(reference: Any) -> Mapping[str, Any]:
    """Expected names and shapes from a state dict, a module, or a DiT config."""
    if isinstance(reference, Mapping):
        return reference
    if isinstance(reference, nn.Module):
        return reference.state_dict()
    # A config: build the model on the meta device (no memory, no init cost).
    from mugv.models.dit.model import MUGDiT

    with torch.device("meta"):
        model = MUGDiT(reference)
    return model.state_dict()


def from_mugv(state_dict: Mapping[str, Tensor], *, reference: Any = None) -> tuple[StateDict, LoadReport]:
    """A MUG-V inference-layout state dict -> ours, with a :class:`LoadReport`.

    ``reference`` tells what is expected: our model's state dict, the model itself, or a
    ``DiTConfig``. Without it, the keys are checked against the layout (every key must be known)
    and for completeness given the block indices present; shapes are then not checked.
    The report is returned, not raised: call ``report.raise_for_errors()``, or use
    :func:`load_into`, which raises.
    """
    out: StateDict = dict(state_dict)
    if reference is not None:
        expected = _expected_from_reference(reference)
        report = compare_state_dicts(out, expected, layout="mugv", known_absent=KNOWN_ABSENT["mugv"])
    else:
        report = dit_report("mugv")
        report.unexpected = [k for k in out if _match_ours(k) is None]
        for name in _structural_expected_names(out):
            if name not in out:
                report.missing.append(name)
        report.absent_in_source_ok = [k for k in KNOWN_ABSENT["mugv"] if k not in out]
        report.notes.append("no reference given: names checked, shapes not")
    return out, report
