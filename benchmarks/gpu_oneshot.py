"""One-shot GPU benchmark: everything worth knowing about mugv on one GPU, inside one lease.

Parts, in the order that loses least to a timeout (shared/reference/GPU-READINESS.md):
P0 environment and ceilings, P1 attention backends, P2-core DiT training step at 10B block shapes,
P3 generation latency, P4 VAE, P2-compile, P5 elementwise kernels, P6 numerics, P2-extra.

Every measurement rewrites OUT/gpu_bench.json, so a kill still leaves results; each part checks
the deadline before every variant and records what it skipped. The math SDPA backend is disabled
on CUDA, so a fallback to it fails loudly instead of quietly timing the slow path.

    python benchmarks/gpu_oneshot.py --out OUT [--deadline-s 420]     # on a GPU
    python benchmarks/gpu_oneshot.py --smoke --device cpu --out OUT    # every part, tiny shapes

It runs on a GPU machine's own torch and imports only mugv's model, flow, parallel and training
code (no video, curation or text-encoder packages).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_IMPORT_START = time.perf_counter()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mugv.config import FlowConfig, ParallelConfig  # noqa: E402
from mugv.data.batch import LatentBatch  # noqa: E402
from mugv.distributed.parallel_dims import ParallelDims  # noqa: E402
from mugv.distributed.parallelize import ParallelPlan, apply_block_transforms, apply_fsdp  # noqa: E402
from mugv.flow import CFGVelocity, euler_sample, sampling_sigmas  # noqa: E402
from mugv.kernels import reference as ref_kernels  # noqa: E402
from mugv.models.dit.config import DiTConfig  # noqa: E402
from mugv.models.dit.model import MUGDiT  # noqa: E402
from mugv.models.dit.rope import rope_angles  # noqa: E402
from mugv.models.vae.precision import tf32_switches, vae_precision  # noqa: E402
from mugv.train.metrics import batch_train_flops  # noqa: E402
from mugv.train.objectives import ConditioningPolicy, FlowMatchingObjective  # noqa: E402

IMPORT_SECONDS = round(time.perf_counter() - _IMPORT_START, 2)  # torch and mugv

PEAK_DENSE_BF16 = 989.0  # H100 / H200 SXM datasheet, TFLOP/s
PARTS = ("P0", "P1", "P2-core", "P3", "P4", "P2-compile", "P5", "P6", "P2-extra")


@dataclass(frozen=True)
class Shapes:
    """Full-size shapes (the spec's) or the smoke test's tiny ones."""

    preset: str
    layers: int
    latent: tuple[int, int, int]  # latent T, H, W of the 720p / 105-frame clip
    latent_480p: tuple[int, int, int]
    text_tokens: int
    text_real: int
    attn_heads: int
    attn_tokens: int
    attn_tokens_360p: int
    ulysses_heads: int
    vae_preset: str
    vae_frames: int
    vae_hw: tuple[int, int]
    vae_tile: tuple[int, int]  # tile size and overlap in pixels of the tiled variant
    gemm: int
    copy_bytes: int
    numerics_tokens: int
    reps: int

    @property
    def tokens(self) -> int:
        t, h, w = self.latent
        return t * (h // 2) * (w // 2) + 2


FULL = Shapes(preset="10b", layers=4, latent=(14, 90, 160), latent_480p=(14, 60, 106), text_tokens=300, text_real=120,
              attn_heads=48, attn_tokens=50402, attn_tokens_360p=12322, ulysses_heads=6, vae_preset="mugv",
              vae_frames=17, vae_hw=(720, 1280), vae_tile=(512, 64), gemm=8192, copy_bytes=4 << 30,
              numerics_tokens=4096, reps=3)
SMOKE = Shapes(preset="debug", layers=2, latent=(2, 8, 8), latent_480p=(2, 6, 8), text_tokens=8, text_real=5,
               attn_heads=2, attn_tokens=66, attn_tokens_360p=34, ulysses_heads=1, vae_preset="tiny",
               vae_frames=9, vae_hw=(32, 32), vae_tile=(16, 8), gemm=128, copy_bytes=1 << 20, numerics_tokens=34,
               reps=1)


class Bench:
    """Results, deadline and log; `variant` runs one measurement and records what happened."""

    def __init__(self, out: Path, deadline_s: float, device: torch.device, shapes: Shapes, smoke: bool):
        self.out, self.deadline, self.device, self.shapes, self.smoke = out, deadline_s, device, shapes, smoke
        self.start = time.monotonic()
        self.log_file = (out / "bench.log").open("a")
        self.results: dict = {
            "schema": 1, "commit": _commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "deadline_s": deadline_s, "elapsed_s": 0, "smoke": smoke, "env": {}, "ceilings": {}, "attention": [],
            "dit_train": [], "profile": {}, "generation": [], "vae": [], "kernels": [], "numerics": {},
            "planner_check": {}, "errors": [], "skipped": [],
        }
        self.summary: list[str] = []

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - (time.monotonic() - self.start)

    def log(self, message: str) -> None:
        line = f"[{time.monotonic() - self.start:7.1f}s] {message}"
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.start, 1)
        tmp = self.out / "gpu_bench.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.out / "gpu_bench.json")

    def record(self, key: str, row) -> None:
        if isinstance(self.results[key], list):
            self.results[key].append(row)
        else:
            self.results[key].update(row)
        self.save()

    @contextlib.contextmanager
    def variant(self, part: str, name: str, need_s: float = 0.0):
        """Skip when the deadline is near; record an error (OOM with a memory summary) and go on."""
        state = {"ok": False}
        if self.left() < need_s:
            self.results["skipped"].append({"part": part, "variant": name, "reason": "deadline"})
            self.log(f"{part} {name}: skipped (deadline, {self.left():.0f}s left)")
            self.save()
            yield None
            return
        self.reset_memory()
        try:
            yield state
            state["ok"] = True
        except Exception as exc:  # noqa: BLE001 - a failed variant is a result, not the end of the run
            oom = isinstance(exc, torch.cuda.OutOfMemoryError) if self.cuda else False
            error = {"part": part, "variant": name, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            if oom:
                error["memory"] = torch.cuda.memory_summary(abbreviated=True)[:2000]
            self.results["errors"].append(error)
            self.log(f"{part} {name}: {'OOM' if oom else 'error'}: {error['error']}")
            state["oom"] = oom
            self.save()
        finally:
            gc.collect()
            if self.cuda:
                torch.cuda.empty_cache()

    def reset_memory(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def fraction_of(self, ceiling: str, value: float, percent: bool = False) -> float | None:
        """`value` over a measured ceiling (None when P0 did not measure it or it rounds to 0)."""
        limit = self.results["ceilings"].get(ceiling)
        if not limit:
            return None
        return round(value / limit * (100 if percent else 1), 4)

    def peak_gib(self) -> tuple[float, float]:
        if not self.cuda:
            return 0.0, 0.0
        return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30

    def timed(self, fn, warmup: int = 1, reps: int | None = None) -> dict:
        """Median, min and all of `reps` runs in ms (CUDA events on a GPU), after `warmup` runs."""
        reps = reps or self.shapes.reps
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return {"median": statistics.median(times), "min": min(times), "all": [round(t, 3) for t in times]}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def rand(*shape, device, dtype=torch.float32, generator=None):
    return torch.randn(*shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# P0: environment and ceilings
# ------------------------------------------------------------------------------------------------

def part_environment(bench: Bench) -> None:
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "import_mugv_s": IMPORT_SECONDS,
           "sdp_enabled": {}, "tf32": {}}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if bench.cuda:
        t0 = time.perf_counter()
        torch.cuda.init()
        props = torch.cuda.get_device_properties(bench.device)
        env.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(), device=props.name,
                   sm=props.multi_processor_count, mem_gib=round(props.total_memory / 2**30, 1),
                   cuda_init_s=round(time.perf_counter() - t0, 2))
        env["sdp_enabled"] = {name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
                              for name in ("flash", "mem_efficient", "cudnn", "math")}
        env["tf32"] = {key: getattr(owner, attr) for key, (owner, attr, _, _) in zip(("matmul", "cudnn"), tf32_switches())}
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["device"] = "cpu"
    with contextlib.suppress(Exception):
        env["sdp_priority"] = [str(b) for b in torch._C._get_sdp_priority_order()]
    env["sdpa_env"] = {k: v for k, v in os.environ.items() if k.startswith("TORCH_CUDNN_SDPA")}
    with contextlib.suppress(Exception):
        env["flash_impls"] = list(torch.nn.attention.list_flash_attention_impls())
    try:
        import flash_attn_interface  # noqa: F401

        env["fa3"] = True
    except ImportError:
        env["fa3"] = False
    bench.record("env", env)
    bench.log(f"P0 env: {env.get('device')} torch {env['torch']} triton {env['triton']}")

    s = bench.shapes
    with bench.variant("P0", "gemm") as ok:
        if ok is not None:
            dtype = torch.bfloat16 if bench.cuda else torch.float32
            a, b = rand(s.gemm, s.gemm, device=bench.device, dtype=dtype), rand(s.gemm, s.gemm, device=bench.device,
                                                                                 dtype=dtype)
            t = bench.timed(lambda: a @ b, warmup=3, reps=10 if bench.cuda else 2)
            tflops = 2 * s.gemm**3 / (t["median"] / 1e3) / 1e12
            bench.record("ceilings", {"gemm_bf16_tflops": round(tflops, 1)})
            bench.log(f"P0 GEMM {s.gemm}^3: {tflops:.1f} TFLOP/s")
    with bench.variant("P0", "copy") as ok:
        if ok is not None:
            src = torch.empty(s.copy_bytes, dtype=torch.uint8, device=bench.device)
            dst = torch.empty_like(src)
            t = bench.timed(lambda: dst.copy_(src), warmup=2, reps=10 if bench.cuda else 2)
            tbps = 2 * s.copy_bytes / (t["median"] / 1e3) / 1e12
            bench.record("ceilings", {"copy_tbps": round(tbps, 3)})
            bench.log(f"P0 copy: {tbps:.2f} TB/s")


# ------------------------------------------------------------------------------------------------
# P1: attention backends
# ------------------------------------------------------------------------------------------------

BACKENDS = ("default", "flash", "cudnn", "efficient")


def _sdpa_context(backend: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "default":
        return contextlib.nullcontext()
    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend])


def kernel_names(bench: Bench, fn, pattern: str = "") -> list[str]:
    """Names of the device kernels (CPU ops off a GPU) that one call of `fn` launches."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if bench.cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        fn()
        if bench.cuda:
            torch.cuda.synchronize()
    names = {e.name for e in prof.events() if (e.device_type.name == "CUDA") == bench.cuda}
    return sorted(n for n in names if re.search(pattern, n, re.I)) if pattern else sorted(names)


def attention_case(bench: Bench, case: str, b: int, heads: int, nq: int, nk: int, d: int, mask: str = "none",
                   backends=BACKENDS, valid_keys: int | None = None, dtype=None, scale: float | None = None) -> list:
    """Time one attention shape under each backend, forward and forward+backward."""
    dtype = dtype or (torch.bfloat16 if bench.cuda else torch.float32)
    dev = bench.device
    q = rand(b, heads, nq, d, device=dev, dtype=dtype).requires_grad_()
    k = rand(b, heads, nk, d, device=dev, dtype=dtype).requires_grad_()
    v = rand(b, heads, nk, d, device=dev, dtype=dtype).requires_grad_()
    attn_mask = None
    if mask in ("bool_key", "text"):
        attn_mask = torch.zeros(b, 1, 1, nk, dtype=torch.bool, device=dev)
        attn_mask[..., : valid_keys or nk] = True
    if mask == "sliced":
        k, v = (t.detach()[:, :, : valid_keys].requires_grad_() for t in (k, v))
    flops_fwd = 4 * b * heads * nq * (valid_keys if mask == "sliced" else nk) * d
    rows = []
    for backend in backends:
        for pass_ in ("fwd", "fwdbwd"):
            row = {"case": case, "backend": backend, "B": b, "H": heads, "Nq": nq, "Nk": nk, "D": d, "mask": mask,
                   "pass": pass_, "dtype": str(dtype).replace("torch.", "")}
            with bench.variant("P1", f"{case}/{backend}/{pass_}", need_s=5) as ok:
                if ok is None:
                    continue

                def run():
                    with _sdpa_context(backend):
                        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
                        if pass_ == "fwdbwd":
                            out.backward(torch.ones_like(out))

                try:
                    t = bench.timed(run, warmup=2, reps=5 if bench.cuda else 1)
                except RuntimeError as exc:
                    if "out of memory" in str(exc).lower():
                        raise
                    row.update(status="unsupported", reason=str(exc)[:200])
                    rows.append(row)
                    bench.record("attention", row)
                    continue
                flops = flops_fwd * (3 if pass_ == "fwdbwd" else 1)
                tflops = flops / (t["median"] / 1e3) / 1e12
                row.update(status="ok", ms=round(t["median"], 3), tflops=round(tflops, 1),
                           pct_gemm_ceiling=bench.fraction_of("gemm_bf16_tflops", tflops, percent=True))
                if backend == "default" and pass_ == "fwd":
                    row["kernel"] = kernel_names(bench, run, "attn|fmha|flash|sdpa|attention")
                rows.append(row)
                bench.record("attention", row)
                bench.log(f"P1 {case} {backend:9s} {pass_:6s}: {t['median']:.2f} ms, {tflops:.0f} TFLOP/s")
    return rows


def attention_errors(bench: Bench, heads: int, tokens: int, d: int) -> None:
    """Each backend's relative error on S1 cut to `tokens`, against fp32 math."""
    dev = bench.device
    gen = torch.Generator().manual_seed(0)
    q, k, v = (rand(1, heads, tokens, d, device=dev, generator=gen) for _ in range(3))
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    for backend in BACKENDS:
        with bench.variant("P1", f"S1-err/{backend}", need_s=3) as ok:
            if ok is None:
                continue
            try:
                with _sdpa_context(backend):
                    out = F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype)).float()
            except RuntimeError as exc:
                bench.record("attention", {"case": "S1-err", "backend": backend, "status": "unsupported",
                                           "reason": str(exc)[:200]})
                continue
            err = ((out - exact).norm() / exact.norm()).item()
            bench.record("attention", {"case": "S1-err", "backend": backend, "Nq": tokens, "status": "ok",
                                       "rel_err": err})


def part_attention(bench: Bench) -> None:
    s = bench.shapes
    d = 72 if s.preset == "10b" else DiTConfig.from_preset(s.preset).head_dim
    rows = attention_case(bench, "S1", 1, s.attn_heads, s.attn_tokens, s.attn_tokens, d)
    best = sorted({r["backend"] for r in rows if r.get("status") == "ok" and r["pass"] == "fwdbwd"},
                  key=lambda name: min(r["ms"] for r in rows if r["backend"] == name and r.get("status") == "ok"))
    for padded in (80, 96, 128):  # head dim 72 on a wider tile: what the padding costs or saves
        attention_case(bench, f"S1p{padded}", 1, s.attn_heads, s.attn_tokens, s.attn_tokens, padded,
                       backends=[b for b in best if b != "default"][:2] or ("default",), scale=d**-0.5)
    ulysses_tokens = s.attn_tokens + 6  # padded to a multiple of cp x tp
    attention_case(bench, "S2a", 1, s.ulysses_heads, ulysses_tokens, ulysses_tokens, d, mask="bool_key",
                   valid_keys=s.attn_tokens)
    attention_case(bench, "S2b", 1, s.ulysses_heads, ulysses_tokens, ulysses_tokens, d, mask="sliced",
                   valid_keys=s.attn_tokens)
    attention_case(bench, "S3", 1, s.attn_heads, s.attn_tokens, s.text_tokens, d, mask="text",
                   valid_keys=s.text_real)
    attention_case(bench, "S4", 1, s.attn_heads, s.attn_tokens_360p, s.attn_tokens_360p, d)
    vae_tokens = 14400 if s.preset == "10b" else 64
    vae_batch = 16 if s.preset == "10b" else 2
    for dtype in ((torch.bfloat16, torch.float32) if bench.cuda else (torch.float32,)):
        attention_case(bench, f"S5-{str(dtype)[6:]}", vae_batch, 1, vae_tokens, vae_tokens, 512 if bench.cuda else 64,
                       backends=("default",), dtype=dtype)
    attention_errors(bench, s.attn_heads, min(4096, s.attn_tokens), d)


# ------------------------------------------------------------------------------------------------
# P2: DiT training step at 10B block shapes
# ------------------------------------------------------------------------------------------------

def model_config(bench: Bench, layers: int) -> DiTConfig:
    cfg = DiTConfig.from_preset(bench.shapes.preset)
    cfg.depth = layers
    if bench.shapes.preset == "10b":
        cfg.text_dim, cfg.max_text_tokens = 4096, bench.shapes.text_tokens
    return cfg


def build_model(bench: Bench, cfg: DiTConfig, dtype: torch.dtype = torch.float32) -> MUGDiT:
    """Built on the meta device, then materialised on the target and initialised there."""
    with torch.device("meta"):
        model = MUGDiT(cfg)
    model.to_empty(device=bench.device)
    model.init_weights()
    with torch.no_grad():  # a trained-looking model: the fresh init zeroes the output layer
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.to(dtype)


def train_batch(bench: Bench, cfg: DiTConfig, latent=None, seed: int = 0) -> LatentBatch:
    s = bench.shapes
    t, h, w = latent or s.latent
    gen = torch.Generator().manual_seed(seed)
    dev = bench.device
    mask = torch.zeros(1, s.text_tokens, dtype=torch.bool, device=dev)
    mask[:, : s.text_real] = True
    return LatentBatch(latents=rand(1, cfg.in_channels, t, h, w, device=dev, generator=gen),
                       text=rand(1, s.text_tokens, cfg.text_dim, device=dev, generator=gen), text_mask=mask,
                       fps=torch.full((1,), 24.0, device=dev), pixel_height=h * 8, pixel_width=w * 8)


class OneRankGroup:
    """A process group of one, so the FSDP2 path (`apply_fsdp`) runs on a single device."""

    def __init__(self, bench: Bench):
        self.bench = bench

    def __enter__(self):
        import torch.distributed as dist

        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
            dist.init_process_group("nccl" if self.bench.cuda else "gloo", rank=0, world_size=1)
        return self

    def __exit__(self, *exc):
        return False


def prepare_variant(bench: Bench, name: str, layers: int) -> tuple[MUGDiT, dict]:
    """The model of one training variant, set up through the project's own parallel code."""
    cfg = model_config(bench, layers)
    spec = TRAIN_VARIANTS[name]
    model = build_model(bench, cfg)
    pcfg = ParallelConfig(dp_shard=1, activation_checkpointing=spec["ac"], compile=spec["compile"],
                          param_dtype="bf16" if spec["fsdp"] and bench.cuda else "fp32")
    if spec["fsdp"]:
        with OneRankGroup(bench):
            dims = ParallelDims.from_config(pcfg, world_size=1)
            plan = ParallelPlan(dims=dims, mesh=dims.build_mesh(bench.device.type), coords=dims.coordinates(0))
            apply_block_transforms(list(model.blocks), pcfg)
            apply_fsdp(model, list(model.blocks), plan, pcfg)
    else:
        apply_block_transforms(list(model.blocks), pcfg)
    return model, {"param_dtype": pcfg.param_dtype, "ac": spec["ac"], "compile": "project" if spec["compile"]
                   else "none", "fsdp": spec["fsdp"], "autocast": spec["autocast"]}


TRAIN_VARIANTS = {
    "V1": {"ac": "none", "compile": False, "fsdp": False, "autocast": True},  # `mugv train` on one GPU
    "V2": {"ac": "full", "compile": False, "fsdp": True, "autocast": False},  # the 10B profiles' recipe
    "V6": {"ac": "attention", "compile": False, "fsdp": True, "autocast": False},
    "V4": {"ac": "full", "compile": True, "fsdp": True, "autocast": False},
    "V5b": {"ac": "none", "compile": True, "fsdp": True, "autocast": False},
    "V3": {"ac": "selective", "compile": False, "fsdp": True, "autocast": False},
}


def train_step_fn(bench: Bench, model: MUGDiT, batch: LatentBatch, autocast: bool):
    objective = FlowMatchingObjective(FlowConfig(), ConditioningPolicy(first_frame_prob=0.5, caption_dropout=0.1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    gen = torch.Generator().manual_seed(1)
    state = {}

    def step():
        ctx = torch.autocast(bench.device.type, dtype=torch.bfloat16) if autocast and bench.cuda \
            else contextlib.nullcontext()
        with ctx:
            loss = objective.compute(model, batch, gen).loss
        loss.backward()
        state["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["loss"] = loss.item()

    return step, state


def run_train_variant(bench: Bench, name: str, layers: int | None = None, attn_backend: str = "default",
                      part: str = "P2-core", need_s: float = 20) -> dict | None:
    s = bench.shapes
    layers = layers or s.layers
    label = f"{name}@{layers}" + ("" if attn_backend == "default" else f"/{attn_backend}")
    row = None
    with bench.variant(part, label, need_s=need_s) as ok:
        if ok is None:
            return None
        import torch._dynamo

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        model, info = prepare_variant(bench, name, layers)
        batch = train_batch(bench, model.cfg)
        step, state = train_step_fn(bench, model, batch, info["autocast"])
        with _sdpa_context(attn_backend):
            t0 = time.perf_counter()
            step()  # warm-up, and compilation where compile is on
            if bench.cuda:
                torch.cuda.synchronize()
            compile_s = time.perf_counter() - t0
            times = bench.timed(step, warmup=0)
            attn_kernel = kernel_names(bench, step, "attn|fmha|flash|sdpa|attention")
        alloc, reserved = bench.peak_gib()
        flops = batch_train_flops(model.cfg, batch)
        flops_release = model.cfg.megatron_train_flops(*batch.latents.shape[2:], s.text_real)
        step_s = times["median"] / 1e3
        tflops = flops / step_s / 1e12
        graphs = torch._dynamo.utils.counters["stats"].get("unique_graphs", 0)
        row = {"variant": name, "layers": layers, "tokens": s.tokens, "text_tokens": s.text_real, **info,
               "attn_backend": attn_backend, "graphs_compiled": graphs, "attn_kernel": attn_kernel,
               "step_ms": times, "compile_s": round(compile_s, 2) if info["compile"] != "none" else 0,
               "samples_per_s": 1 / step_s, "tokens_per_s": s.tokens / step_s, "tflops": round(tflops, 2),
               "mfu_989": round(tflops / PEAK_DENSE_BF16, 4), "mfu_measured": bench.fraction_of("gemm_bf16_tflops", tflops),
               "hfu_989": round(tflops * (4 / 3 if info["ac"] == "full" else 1) / PEAK_DENSE_BF16, 4),
               "mfu_release_formula": round(flops_release / step_s / 1e12 / PEAK_DENSE_BF16, 4),
               "peak_alloc_gib": round(alloc, 2), "peak_reserved_gib": round(reserved, 2),
               "loss": state["loss"], "grad_norm": state["grad_norm"],
               "extrap_56": {"step_s": round(step_s * 56 / layers, 2)}}
        bench.record("dit_train", row)
        bench.log(f"{part} {label}: {times['median']:.1f} ms/step, {tflops:.1f} TFLOP/s, MFU "
                  f"{100 * row['mfu_989']:.1f} %, peak {alloc:.1f} GiB, graphs {graphs}")
        if name == "V2" and part == "P2-core":
            profile_step(bench, step)
        del model
    return row


PROFILE_CATEGORIES = (("gemm", r"gemm|nvjet|cutlass|xmma|sm90|addmm|\bmm\b|matmul"),
                      ("attention", r"flash|fmha|cudnn.*sdpa|attention"),
                      ("elementwise_reduce", r"elementwise|reduce|layer_norm|vectorized|triton"),
                      ("memcpy", r"memcpy|memset|copy"))


def profile_step(bench: Bench, step) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if bench.cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        step()
        if bench.cuda:
            torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        ms = (event.device_time_total if bench.cuda else event.self_cpu_time_total) / 1e3
        totals[event.key] = totals.get(event.key, 0.0) + ms
    by_category = dict.fromkeys([c for c, _ in PROFILE_CATEGORIES] + ["other"], 0.0)
    for name, ms in totals.items():
        category = next((c for c, pattern in PROFILE_CATEGORIES if re.search(pattern, name, re.I)), "other")
        by_category[category] += ms
    top = sorted(totals.items(), key=lambda kv: -kv[1])[:15]
    (bench.out / "profile_top.txt").write_text("\n".join(f"{ms:10.2f} ms  {name}" for name, ms in top) + "\n")
    bench.record("profile", {"variant": "V2", "by_category_ms": {k: round(v, 2) for k, v in by_category.items()},
                             "top_kernels": [[name, round(ms, 2)] for name, ms in top]})


def part_train_core(bench: Bench) -> None:
    if bench.cuda:
        torch.backends.cuda.enable_math_sdp(False)  # a math fallback must fail, not be timed
    for name in ("V1", "V2", "V6", "V4"):
        row = run_train_variant(bench, name)
        if row is None and bench.results["errors"] and bench.results["errors"][-1].get("memory"):
            run_train_variant(bench, name, layers=max(1, bench.shapes.layers // 2))  # OOM: retry at half depth


def part_train_compile(bench: Bench) -> None:
    run_train_variant(bench, "V5b", part="P2-compile", need_s=100 if not bench.smoke else 0)


def part_train_extra(bench: Bench) -> None:
    run_train_variant(bench, "V3", part="P2-extra")
    done = [r for r in bench.results["dit_train"] if r["layers"] == bench.shapes.layers]
    if done:
        best = min(done, key=lambda r: r["step_ms"]["median"])
        for backend in ("flash", "cudnn"):
            run_train_variant(bench, best["variant"], attn_backend=backend, part="P2-extra")
    full_4 = next((r for r in bench.results["dit_train"] if r["variant"] == "V2" and r["layers"] == bench.shapes.layers
                   and r["attn_backend"] == "default"), None)
    half = max(1, bench.shapes.layers // 2)
    full_2 = run_train_variant(bench, "V2", layers=half, part="P2-extra")
    if full_4 and full_2 and bench.cuda:
        cfg = model_config(bench, 1)
        per_layer_gib = (full_4["peak_alloc_gib"] - full_2["peak_alloc_gib"]) / (bench.shapes.layers - half)
        unit_gib = bench.shapes.tokens * cfg.hidden_size * 2 / 2**30  # one bf16 (tokens x hidden) tensor
        params_gib = 4 * 4 * cfg.hidden_size**2 * 12 / 2**30  # fp32 weight + grad + 2 Adam moments per layer
        bench.record("planner_check", {
            "per_layer_gib": round(per_layer_gib, 3),
            "units_full_measured": round((per_layer_gib - params_gib) / unit_gib, 2),
            "static_gib": round(full_2["peak_alloc_gib"] - half * per_layer_gib, 2),
            "step_ms_per_layer": (full_4["step_ms"]["median"] - full_2["step_ms"]["median"]) / (bench.shapes.layers
                                                                                             - half),
            "planner": {"full": 1, "attention": 3, "selective": 13, "none": 26}})


# ------------------------------------------------------------------------------------------------
# P3: generation latency
# ------------------------------------------------------------------------------------------------

def part_generation(bench: Bench) -> None:
    s = bench.shapes
    dtype = torch.bfloat16 if bench.cuda else torch.float32
    for res, latent in (("720p", s.latent), ("480p", s.latent_480p)):
        with bench.variant("P3", res, need_s=15) as ok:
            if ok is None:
                continue
            cfg = model_config(bench, s.layers)
            model = build_model(bench, cfg, dtype).eval()
            batch = train_batch(bench, cfg, latent)
            null_text, null_mask = model.null_text(1)
            null_text = F.pad(null_text, (0, 0, 0, s.text_tokens - null_text.shape[1])) \
                if null_text.shape[1] < s.text_tokens else null_text[:, : s.text_tokens]
            null_mask = torch.ones(1, s.text_tokens, dtype=torch.bool, device=bench.device)

            def model_fn(z, sigma, cond):
                text, mask = cond
                return model(z.to(dtype), sigma * 1000, text.to(dtype), fps=torch.full((z.shape[0],), 24.0,
                             device=z.device), text_mask=mask)[:, : cfg.in_channels].float()

            velocity = CFGVelocity(model_fn, (batch.text, batch.text_mask), (null_text, null_mask), 4.0,
                                   lambda a, b: (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])))
            noise = torch.randn_like(batch.latents)
            steps = 3
            with torch.inference_mode():
                t = bench.timed(lambda: euler_sample(velocity, noise, sampling_sigmas(steps)), warmup=1)
            step_ms = t["median"] / steps
            tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2) + 2
            row = {"res": res, "frames": 105, "tokens": tokens, "cfg_batch": 2, "layers": s.layers,
                   "step_ms": round(step_ms, 2), "extrap_10b_step_s": round(step_ms * 56 / s.layers / 1e3, 2),
                   "extrap_25_steps_s": round(25 * step_ms * 56 / s.layers / 1e3, 1)}
            bench.record("generation", row)
            bench.log(f"P3 {res}: {step_ms:.1f} ms per CFG step at {s.layers} layers, "
                      f"~{row['extrap_10b_step_s']} s per step at 56")
            del model


# ------------------------------------------------------------------------------------------------
# P4: VAE
# ------------------------------------------------------------------------------------------------

VAE_TFLOP_PER_FRAME = {"encode": 5.45, "decode": 11.5}  # mugv preset at 720x1280, FlopCounterMode


def part_vae(bench: Bench) -> None:
    """Encode and decode through `mugv.models.vae.precision.vae_precision`, the context `mugv
    encode` and `mugv generate` run the VAE in: float32 weights, the precision chosen per call.
    Every variant decodes the fp32 variant's latents; errors are against the fp32 variant
    (random weights, which amplify rounding more than trained ones)."""
    from mugv.models.vae.config import VAEConfig
    from mugv.models.vae.model import MUGVideoVAE

    s = bench.shapes
    tile, overlap = s.vae_tile
    # (name, precision, tile size, cudnn.benchmark), by value: a timeout loses the last ones
    variants = [("fp32_untiled", "fp32", 0, False), ("bf16_untiled", "bf16", 0, False),
                ("tf32_untiled", "tf32", 0, False), ("bf16_tiled", "bf16", tile, False),
                ("bf16_untiled_cudnn_benchmark", "bf16", 0, True)]
    torch.manual_seed(0)
    with torch.device(bench.device):  # initialised where it runs: seconds, not a minute, for 0.4 B parameters
        vae = MUGVideoVAE(VAEConfig.from_preset(s.vae_preset)).eval()
    vae.cfg.tile_overlap = overlap
    video = rand(1, 3, s.vae_frames, *s.vae_hw, device=bench.device).clamp(-1, 1)
    reference: dict[str, torch.Tensor] = {}
    benchmark_mode = torch.backends.cudnn.benchmark
    for name, precision, tile_size, cudnn_benchmark in variants:
        with bench.variant("P4", name, need_s=20) as ok:
            if ok is None:
                continue
            vae.cfg.tile_size = tile_size
            torch.backends.cudnn.benchmark = cudnn_benchmark
            row = {"variant": name, "precision": precision, "tile": tile_size, "frames": s.vae_frames,
                   "hw": list(s.vae_hw)}
            reps = 2 if bench.cuda else 1
            with torch.inference_mode():
                with vae_precision(precision, bench.device):
                    bench.reset_memory()
                    t_enc = bench.timed(lambda: vae.encode(video), warmup=1, reps=reps)
                    row["enc_peak_gib"] = round(bench.peak_gib()[0], 2)
                    z = vae.encode(video)
                    z_in = reference.get("z", z)
                    bench.reset_memory()
                    t_dec = bench.timed(lambda: vae.decode(z_in, s.vae_frames), warmup=1, reps=reps)
                    row["dec_peak_gib"] = round(bench.peak_gib()[0], 2)
                    pixels = vae.decode(z_in, s.vae_frames)
            row["latent_dtype"], row["pixel_dtype"] = str(z.dtype)[6:], str(pixels.dtype)[6:]
            if name == "fp32_untiled":
                reference.update(z=z, pixels=pixels, enc_ms=t_enc["median"], dec_ms=t_dec["median"])
            if reference:
                row["latent_rel_err_vs_fp32"] = rel_err(z, reference["z"])
                row["pixel_rel_err_vs_fp32"] = rel_err(pixels, reference["pixels"])
                row["enc_speedup_vs_fp32"] = round(reference["enc_ms"] / t_enc["median"], 3)
                row["dec_speedup_vs_fp32"] = round(reference["dec_ms"] / t_dec["median"], 3)
            row["enc_fps"] = round(s.vae_frames / (t_enc["median"] / 1e3), 2)
            row["dec_fps"] = round(s.vae_frames / (t_dec["median"] / 1e3), 2)
            if s.vae_preset == "mugv":
                row["tflops_enc"] = round(row["enc_fps"] * VAE_TFLOP_PER_FRAME["encode"], 1)
                row["tflops_dec"] = round(row["dec_fps"] * VAE_TFLOP_PER_FRAME["decode"], 1)
                row["extrap_121_frames_s"] = round(121 / row["enc_fps"] + 121 / row["dec_fps"], 1)
            bench.record("vae", row)
            bench.log(f"P4 {name}: encode {row['enc_fps']} frames/s ({row.get('enc_speedup_vs_fp32')}x fp32), "
                      f"decode {row['dec_fps']} frames/s ({row.get('dec_speedup_vs_fp32')}x fp32)")
            del z, pixels
    torch.backends.cudnn.benchmark = benchmark_mode
    del vae, video, reference


# ------------------------------------------------------------------------------------------------
# P5: elementwise kernels and bandwidth
# ------------------------------------------------------------------------------------------------

def elementwise_chains(bench: Bench):
    """(name, fn, inputs, minimal bytes moved) for each chain of a block at 720p."""
    s = bench.shapes
    cfg = model_config(bench, 1)
    dev, dtype = bench.device, (torch.bfloat16 if bench.cuda else torch.float32)
    n, h, heads, d = s.tokens, cfg.hidden_size, cfg.num_heads, cfg.head_dim
    x = rand(1, n, h, device=dev, dtype=dtype)
    y = rand(1, n, h, device=dev, dtype=dtype)
    rows = [rand(1, h, device=dev, dtype=dtype) * 0.1 for _ in range(4)]
    select = torch.rand(1, n, 1, device=dev) > 0.05
    q = rand(1, heads, n, d, device=dev, dtype=dtype)
    weight = torch.ones(d, device=dev, dtype=dtype)
    cos, sin = (t.to(dev) for t in rope_angles(s.latent[0], s.latent[1] // 2, s.latent[2] // 2, d))
    e = x.element_size()
    act = n * h * e

    def layernorm_modulate(x, scale, shift, scale0, shift0, select):
        return ref_kernels.modulate(F.layer_norm(x, (h,), eps=1e-6), scale, shift, scale0, shift0, select)

    return [
        ("modulate_select", ref_kernels.modulate, (x, rows[0], rows[1], rows[2], rows[3], select), 2 * act),
        ("gate_residual", ref_kernels.gate_residual, (x, y, rows[0], rows[1], select), 3 * act),
        ("layernorm_modulate", layernorm_modulate, (x, rows[0], rows[1], rows[2], rows[3], select), 2 * act),
        ("qk_rmsnorm", ref_kernels.rms_norm, (q, weight, 1e-6), 2 * q.numel() * e),
        ("rope_fp32", ref_kernels.apply_rope, (q.float(), cos, sin), 2 * q.numel() * 4),
        ("rmsnorm_rope", ref_kernels.rms_norm_rope, (q, weight, 1e-6, cos, sin), 2 * q.numel() * e),
    ]


def part_kernels(bench: Bench) -> None:
    from mugv import kernels

    triton_ops = None
    if bench.cuda and kernels.triton_available():
        from mugv.kernels import triton_ops
    fused = {"modulate_select": "modulate", "gate_residual": "gate_residual", "rmsnorm_rope": "rms_norm_rope"}
    for name, fn, args, nbytes in elementwise_chains(bench):
        impls = [("eager", fn), ("compiled", torch.compile(fn, backend="aot_eager" if bench.smoke else "inductor"))]
        if triton_ops is not None and name in fused:
            impls.append(("triton", getattr(triton_ops, fused[name])))
        for impl, f in impls:
            with bench.variant("P5", f"{name}/{impl}", need_s=5) as ok:
                if ok is None:
                    continue
                t = bench.timed(lambda f=f: f(*args), warmup=2, reps=10 if bench.cuda else 1)
                gbps = nbytes / (t["median"] / 1e3) / 1e9
                row = {"name": name, "impl": impl, "ms": round(t["median"], 4), "gbps": round(gbps, 1),
                       "pct_copy": bench.fraction_of("copy_tbps", gbps / 1e3, percent=True)}
                bench.record("kernels", row)
                bench.log(f"P5 {name:20s} {impl:8s}: {t['median']:.3f} ms, {gbps:.0f} GB/s")


# ------------------------------------------------------------------------------------------------
# P6: numerics
# ------------------------------------------------------------------------------------------------

def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def part_numerics(bench: Bench) -> None:
    s = bench.shapes
    with bench.variant("P6", "rounding") as ok:
        if ok is not None:
            values = torch.tensor([999.3, 873.1, 500.7, 250.2, 17.9])
            cos, _ = rope_angles(s.latent[0], s.latent[1] // 2, s.latent[2] // 2, 72)
            bench.record("numerics", {
                "timestep_bf16": [[v, r] for v, r in zip(values.tolist(), values.bfloat16().float().tolist())],
                "rope_cos_max_err": (cos.bfloat16().float() - cos).abs().max().item(),
                "note": "what FSDP2's cast_forward_inputs did before mugv turned it off"})
    with bench.variant("P6", "block", need_s=10) as ok:
        if ok is not None:
            cfg = model_config(bench, 1)
            model = build_model(bench, cfg)
            latent = (s.latent[0], s.latent[1], max(2, 2 * (s.numerics_tokens // (s.latent[0] * s.latent[1] // 2))))
            batch = train_batch(bench, cfg, latent)
            errors = {}
            args = (batch.latents, torch.tensor([700.0], device=bench.device), batch.text)
            kwargs = dict(fps=batch.fps, text_mask=batch.text_mask)

            def out_and_grads(m, autocast):
                m.zero_grad()
                ctx = torch.autocast(bench.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with ctx:
                    out = m(*args, **kwargs)
                out.float().square().mean().backward()
                return out.detach().float(), [p.grad.detach().float().clone() for p in m.parameters()]

            exact_out, exact_grads = out_and_grads(model, False)
            low = torch.bfloat16 if bench.cuda else torch.float32
            bf16_model = build_model(bench, cfg)
            bf16_model.load_state_dict(model.state_dict())
            bf16_out, bf16_grads = out_and_grads(bf16_model.to(low), False)
            errors["bf16_params_out"] = rel_err(bf16_out, exact_out)
            errors["bf16_params_grad_max"] = max(rel_err(g, e) for g, e in zip(bf16_grads, exact_grads))
            if bench.cuda:
                ac_out, ac_grads = out_and_grads(model, True)
                errors["autocast_out"] = rel_err(ac_out, exact_out)
                errors["autocast_grad_max"] = max(rel_err(g, e) for g, e in zip(ac_grads, exact_grads))
            bench.record("numerics", {"block_rel_err": errors})
            del model, bf16_model
    v1 = next((r for r in bench.results["dit_train"] if r["variant"] == "V1"), None)
    v2 = next((r for r in bench.results["dit_train"] if r["variant"] == "V2" and r["layers"] == v1["layers"]), None) \
        if v1 else None
    if v1 and v2:
        bench.record("numerics", {"loss_v1_v2_rel": abs(v1["loss"] - v2["loss"]) / abs(v2["loss"])})


# ------------------------------------------------------------------------------------------------

PART_FUNCTIONS = {"P0": part_environment, "P1": part_attention, "P2-core": part_train_core, "P3": part_generation,
                  "P4": part_vae, "P2-compile": part_train_compile, "P5": part_kernels, "P6": part_numerics,
                  "P2-extra": part_train_extra}


def write_summary(bench: Bench) -> None:
    r = bench.results
    lines = ["", "=" * 78, f"summary ({r['env'].get('device')}, {r['elapsed_s']} s)"]
    c = r["ceilings"]
    lines.append(f"ceilings: GEMM {c.get('gemm_bf16_tflops')} TFLOP/s, copy {c.get('copy_tbps')} TB/s")
    s1 = [a for a in r["attention"] if a.get("case") == "S1" and a.get("status") == "ok" and a["pass"] == "fwdbwd"]
    if s1:
        best = max(s1, key=lambda a: a["tflops"])
        lines.append(f"attention S1 fwd+bwd best: {best['backend']} {best['tflops']} TFLOP/s ({best['ms']} ms)")
    for row in r["dit_train"]:
        lines.append(f"{row['variant']:4s} ac={row['ac']:9s} compile={row['compile']:7s} layers={row['layers']}: "
                     f"{row['step_ms']['median']:.1f} ms, MFU {100 * row['mfu_989']:.1f} %, peak "
                     f"{row['peak_alloc_gib']} GiB, 56 layers ~{row['extrap_56']['step_s']} s/step")
    for row in r["generation"]:
        lines.append(f"generation {row['res']}: {row['step_ms']} ms/step ({row['layers']} layers), "
                     f"10B ~{row['extrap_10b_step_s']} s/step")
    for row in r["vae"]:
        lines.append(f"VAE {row['variant']}: encode {row['enc_fps']} f/s ({row.get('enc_speedup_vs_fp32')}x fp32), "
                     f"decode {row['dec_fps']} f/s ({row.get('dec_speedup_vs_fp32')}x fp32)")
    for row in r["kernels"]:
        lines.append(f"kernel {row['name']}/{row['impl']}: {row['gbps']} GB/s ({row['pct_copy']} % of copy)")
    lines.append(f"errors: {len(r['errors'])}, skipped: {len(r['skipped'])}")
    for line in lines[-30:]:
        bench.log(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline-s", type=float, default=420.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and the debug preset: a CPU dry run")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if args.smoke:  # the smoke test proves graphs are captured; inductor's CPU codegen would take minutes
        import functools

        torch.nn.Module.compile = functools.partialmethod(torch.nn.Module.compile, backend="aot_eager")
    bench = Bench(args.out, args.deadline_s, torch.device(args.device), SMOKE if args.smoke else FULL, args.smoke)
    bench.save()
    for part in PARTS:
        if part not in parts:
            continue
        if bench.left() <= 0:
            bench.results["skipped"].append({"part": part, "reason": "deadline"})
            continue
        bench.log(f"--- {part} ({bench.left():.0f} s left)")
        try:
            PART_FUNCTIONS[part](bench)
        except Exception as exc:  # noqa: BLE001 - one broken part must not cost the others
            bench.results["errors"].append({"part": part, "variant": "", "error": f"{type(exc).__name__}: {exc}"})
            bench.log(f"{part} failed: {exc}")
        bench.save()
    write_summary(bench)
    bench.save()
    with contextlib.suppress(Exception):
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
