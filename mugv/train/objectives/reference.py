"""The frozen reference model that preference objectives compare against, provided three ways
(ReferenceMode): the same network with its LoRA adapters off, a frozen copy, or nothing (the
reference's values were precomputed into the data). A frozen copy can keep its block weights in
CPU memory (`offload`): on one device each block is streamed in for its forward (BlockStreamer);
sharded, FSDP2's CPUOffloadPolicy does it (mugv.distributed.parallelize)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable

import torch
from torch import nn

from mugv.errors import ConfigError
from mugv.train.lora import has_lora, lora_disabled, trained_in_full
from mugv.train.objectives.base import ReferenceMode


class ReferenceModel:
    """Called like the model it wraps; never records gradients."""

    def __init__(self, module: nn.Module, context: Callable[[], contextlib.AbstractContextManager],
                 separate: bool, offload: bool = False):
        self.module = module
        self.context = context
        self.separate = separate  # a module of its own (to be parallelized like the model)
        self.offload = offload  # its block weights live in CPU memory
        self.streamer: BlockStreamer | None = None

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), self.context():
            out = self.module(*args, **kwargs)
        if self.separate and hasattr(self.module, "reshard"):
            # FSDP2 keeps the root's parameters gathered after a forward, for the backward that a
            # frozen copy never runs: shard them again
            self.module.reshard()
        return out

    def parallelize(self, runtime) -> None:
        """Lay a frozen copy out as the model is (mugv.distributed.runtime.Runtime.parallelize_copy).
        Offloaded, FSDP2 keeps its shards in CPU memory or, not sharded, its blocks stream from there."""
        if not self.separate:
            return
        plan = runtime.parallelize_copy(self.module, cpu_offload=self.offload)
        if not plan.fsdp:
            self.stream_blocks(runtime.device)

    def homes(self, device: torch.device) -> list[tuple[nn.Module, torch.device]]:
        """Where a frozen copy laid out on the meta device gets its memory: `device`, or CPU memory
        when offloaded ([] for the model itself with its adapters off)."""
        if not self.separate:
            return []
        return [(self.module, torch.device("cpu") if self.offload else torch.device(device))]

    def stream_blocks(self, device: torch.device) -> None:
        """One device, offloaded: run the blocks with weights streamed from CPU memory to `device`."""
        if self.offload:
            self.streamer = BlockStreamer(list(self.module.blocks), device)


class BlockStreamer:
    """Keeps frozen blocks' weights in CPU memory (pinned, for asynchronous copies, when the
    device is a GPU) and copies a block's weights to the device just before its forward, dropping
    them after it. On a GPU the next block's copy runs on a side stream during this block's
    forward, so at most two blocks' weights are on the device at once. The copy is made even when
    the device is the CPU, so that the path is the same everywhere."""

    def __init__(self, blocks: list[nn.Module], device: torch.device):
        self.blocks = blocks
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.host: list[list[tuple[nn.Parameter, torch.Tensor]]] = []
        for block in blocks:
            params = []
            for p in block.parameters():
                if p.requires_grad:
                    raise ValueError("only frozen weights can be streamed from the CPU")
                host = p.data.to("cpu")
                p.data = host.pin_memory() if cuda else host
                params.append((p, p.data))
            self.host.append(params)
        self.ready: dict[int, torch.cuda.Event | None] = {}  # blocks whose weights are on the device
        self.resident_bytes = 0
        self.peak_resident_bytes = 0  # the most streamed weight bytes on the device at once
        self.handles = []
        for i, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(lambda module, args, i=i: self.before(i)))
            self.handles.append(block.register_forward_hook(lambda module, args, out, i=i: self.after(i)))

    def fetch(self, i: int) -> None:
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            for p, host in self.host[i]:
                p.data = host.to(self.device, non_blocking=True, copy=True)
            event = None
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        self.ready[i] = event
        self.resident_bytes += sum(host.numel() * host.element_size() for _, host in self.host[i])
        self.peak_resident_bytes = max(self.peak_resident_bytes, self.resident_bytes)

    def before(self, i: int) -> None:
        if i not in self.ready:
            self.fetch(i)
        event = self.ready[i]
        if event is not None:  # the copy ran on the side stream: the forward waits for it
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for p, _ in self.host[i]:
                p.data.record_stream(current)  # freed after the forward's kernels, not the copy's
        if i + 1 < len(self.blocks) and i + 1 not in self.ready:
            self.fetch(i + 1)  # prefetch: overlaps this block's forward on a GPU

    def after(self, i: int) -> None:
        for p, host in self.host[i]:
            p.data = host
        del self.ready[i]
        self.resident_bytes -= sum(host.numel() * host.element_size() for _, host in self.host[i])


def frozen_copy(model: nn.Module, blocks_on_cpu: bool) -> nn.Module:
    """A frozen copy of `model`; with `blocks_on_cpu`, its blocks' weights are copied straight to
    CPU memory (never a second copy of them on the device). A model on the meta device (several
    ranks) is copied there: it gets memory, in CPU memory when offloaded, once parallelized."""
    memo = {}
    if blocks_on_cpu and not next(model.parameters()).is_meta:
        for p in model.blocks.parameters():
            memo[id(p)] = nn.Parameter(p.detach().to("cpu", copy=True), requires_grad=False)
    frozen = copy.deepcopy(model, memo).eval()
    frozen.requires_grad_(False)
    return frozen


def build_reference(mode: ReferenceMode, model: nn.Module, offload: bool = False) -> ReferenceModel | None:
    """The reference for `mode`, made from `model` before it is parallelized; `offload` (a frozen
    copy only) keeps the copy's block weights in CPU memory."""
    if offload and mode is not ReferenceMode.FROZEN_COPY:
        raise ConfigError(f"preference.reference_offload = true keeps a frozen copy in CPU memory, but the reference "
                          f"is {mode.value!r}: it needs a frozen copy (lora.rank = 0, preference.reference = "
                          "'frozen_copy' or 'auto')")
    if mode in (ReferenceMode.NONE, ReferenceMode.PRECOMPUTED):
        return None
    if mode is ReferenceMode.ADAPTERS_OFF:
        if not has_lora(model):
            raise ConfigError("this objective's reference is the model with its LoRA adapters off: set lora.rank > 0 "
                              "(or use a frozen-copy reference for full fine-tuning)")
        if full := sorted(trained_in_full(model)):
            raise ConfigError(f"preference.reference = 'adapters_off' is not the starting model when lora.train_modules "
                              f"trains parameters in full ({', '.join(full[:3])}): use 'frozen_copy'")
        return ReferenceModel(model, lambda: lora_disabled(model), separate=False)
    return ReferenceModel(frozen_copy(model, blocks_on_cpu=offload), contextlib.nullcontext, separate=True,
                          offload=offload)
