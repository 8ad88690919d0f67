"""State-dict adapters for MUG-DiT checkpoints.

Two foreign layouts are understood:

* ``"mugv"``: the published MUG-V inference checkpoint (``dit.pt``). Its names are the names of
  our own :class:`~mugv.models.dit.model.MUGDiT`, except that it does not carry the caption-dropout
  null embedding ``y_embedder.y_embedding`` (the inference model has no such buffer and loads
  strictly). Converting is the identity on names; the work here is validation.
* ``"megatron"``: the Megatron-Core training layout (``decoder.layers.{i}...``), one state dict
  per tensor-parallel rank. Besides the renames, Megatron stores the fused self-attention qkv
  (and the cross-attention kv) per head, ``(n heads c) -> (heads n c)``, so that a contiguous
  row block of one rank holds whole heads; column-parallel weights (qkv, q, kv, fc1, and their
  biases) are split on dim 0, row-parallel weights (both attention ``proj`` and ``fc2``) on
  dim 1 with their biases replicated, everything else replicated.

Every conversion checks names: an unknown key is an error naming it (``from_mugv`` lists it in
its report instead), never dropped; only Transformer-Engine ``_extra_state`` entries, which carry
no weights, are dropped, and they are recorded. Loading into
a model (:func:`load_into`) compares names and shapes with the model and raises
:class:`CheckpointLayoutError` listing every missing, unexpected and mis-shaped key; the only keys
allowed to be absent are those a layout is known not to carry (:data:`KNOWN_ABSENT`), which keep
their initial values and are logged by name.

Storage: our checkpoints are safetensors (:func:`save_safetensors`); published ``.pt`` files load
with ``torch.load(weights_only=True)`` (:func:`load_state_dict`).
"""

from mugv.models.dit.adapters.files import (
    LoadedCheckpoint,
    load_checkpoint,
    load_state_dict,
    read_weights,
    save_safetensors,
)
from mugv.models.dit.adapters.loading import detect_layout, load_into
from mugv.models.dit.adapters.megatron import from_megatron, to_megatron
from mugv.models.dit.adapters.names import (
    KNOWN_ABSENT,
    MEGATRON_RULES,
    CheckpointLayoutError,
    Layout,
    megatron_name,
)
from mugv.models.dit.adapters.release import from_mugv, to_mugv
from mugv.models.dit.adapters.report import LoadReport, compare_state_dicts

__all__ = [
    "CheckpointLayoutError",
    "KNOWN_ABSENT",
    "Layout",
    "LoadReport",
    "LoadedCheckpoint",
    "MEGATRON_RULES",
    "compare_state_dicts",
    "detect_layout",
    "from_megatron",
    "from_mugv",
    "load_checkpoint",
    "load_into",
    "load_state_dict",
    "read_weights",
    "megatron_name",
    "save_safetensors",
    "to_megatron",
    "to_mugv",
]
