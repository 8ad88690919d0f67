"""Latent + text shards: safetensors files of many samples, a JSON sidecar per shard, a Parquet index.

Layout of a shard set (a local folder or any fsspec URL, e.g. `s3://bucket/set`):

    NAME.safetensors   tensors `{slot:06d}.latents` (C, T, H, W) and `{slot:06d}.text` (tokens, D),
                       text holding only the real tokens (no padding); bf16 by default
    NAME.json          the shard's sample records and its byte size; written after the shard, so
                       its presence marks the shard complete (what a resumed encode skips)
    index.parquet      every sample's record with its shard and slot: bucket, latent shape,
                       token count, fps, pixel size, caption, source clip, CRC32 of its bytes
    encode_report.jsonl  manifest rows that were skipped, with the reason

Why safetensors + Parquet rather than tar: the balanced sampler plans batches from the index
alone and then reads exactly the samples it chose, so reads need random access by sample;
safetensors gives that from its header offsets (mmap, no unpickling, no copy of the rest of the
shard), keeps bf16 natively (npy in a tar cannot), and its header states the exact byte size,
so a truncated shard is detected from the first few KB even on remote storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import fsspec
import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from mugv.errors import MugvError

SHARD_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
INDEX_NAME = "index.parquet"
REPORT_NAME = "encode_report.jsonl"
FORMAT = "mugv-shard-v1"

# Columns of the index, with their Python types (the sidecars hold the same records).
INDEX_COLUMNS: dict[str, type] = {
    "key": str,  # unique sample id
    "shard": str,  # shard file name, relative to the set's root
    "slot": int,  # position inside the shard
    "clip_id": str,
    "source": str,  # the clip's source file
    "kind": str,  # "image" or "video"
    "bucket": str,  # FRAMESxHEIGHTxWIDTH in pixels
    "frames": int,
    "height": int,
    "width": int,
    "fps": float,
    "latent_channels": int,
    "latent_frames": int,
    "latent_height": int,
    "latent_width": int,
    "text_tokens": int,
    "text_dim": int,
    "caption": str,
    "crc32": int,
}
# Columns of preference sets (mugv.data.preference), in the index only when its samples have them.
PREFERENCE_COLUMNS: dict[str, type] = {
    "preference": str,  # "pair": the chosen latents + `{slot}.rejected`; "unpaired": latents with a label
    "label": bool,  # unpaired: True = desirable
    "noise_seed": int,  # the seed of the sample's sigma, noise and conditioning draw in training
}


class ShardError(MugvError, RuntimeError):
    """A shard that cannot be used; the message names it."""


# --------------------------------------------------------------------------------------------
# Paths and file systems
# --------------------------------------------------------------------------------------------


def split_url(root: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def tensor_crc32(*tensors: torch.Tensor) -> int:
    crc = 0
    for t in tensors:
        crc = zlib.crc32(t.detach().contiguous().view(torch.uint8).numpy(), crc)
    return crc


def read_header(f) -> tuple[dict[str, Any], int]:
    """A safetensors header from an open binary file and the total file size it implies."""
    head = f.read(8)
    if len(head) < 8:
        raise ShardError("shorter than a safetensors header")
    (size,) = struct.unpack("<Q", head)
    if size > 100_000_000:
        raise ShardError(f"implausible header length {size}")
    raw = f.read(size)
    if len(raw) < size:
        raise ShardError("truncated inside its header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(f"unreadable header ({exc})") from exc
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return header, 8 + size + end


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


@dataclass
class ShardWriter:
    """Collects samples and writes a shard every `shard_size` samples as `{prefix}-{seq:06d}`."""

    root: str
    prefix: str = "shard"
    shard_size: int = 64
    start_seq: int = 0
    dtype: torch.dtype = torch.bfloat16
    written: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fs, self.path = split_url(self.root)
        self.fs.makedirs(self.path, exist_ok=True)
        self.seq = self.start_seq
        self._records: list[dict[str, Any]] = []
        self._tensors: dict[str, torch.Tensor] = {}

    def add(self, record: dict[str, Any], latents: torch.Tensor, text: torch.Tensor,
            rejected: torch.Tensor | None = None) -> None:
        """`record` holds the sample's metadata (see INDEX_COLUMNS; shape fields are filled in);
        `latents` (C, T, H, W) and `text` (tokens, D) with only the real tokens; `rejected`: a
        preference pair's other clip, shaped like `latents`, stored in the same slot."""
        if latents.ndim != 4 or text.ndim != 2 or text.shape[0] < 1:
            raise ValueError(f"expected latents (C, T, H, W) and text (tokens >= 1, D), "
                             f"got {tuple(latents.shape)}, {tuple(text.shape)}")
        if rejected is not None and rejected.shape != latents.shape:
            raise ValueError(f"the rejected clip's latents {tuple(rejected.shape)} differ from the chosen "
                             f"{tuple(latents.shape)}: a pair shares one bucket")
        slot = len(self._records)
        latents = latents.detach().to("cpu", self.dtype).contiguous()
        text = text.detach().to("cpu", self.dtype).contiguous()
        extra = () if rejected is None else (rejected.detach().to("cpu", self.dtype).contiguous(),)
        c, t, h, w = latents.shape
        record = {
            **record,
            "slot": slot,
            "latent_channels": c,
            "latent_frames": t,
            "latent_height": h,
            "latent_width": w,
            "text_tokens": text.shape[0],
            "text_dim": text.shape[1],
            "crc32": tensor_crc32(latents, text, *extra),
        }
        missing = [k for k in INDEX_COLUMNS if k not in record and k != "shard"]
        if missing:
            raise ValueError(f"sample record lacks {', '.join(missing)}")
        self._records.append(record)
        self._tensors[f"{slot:06d}.latents"] = latents
        self._tensors[f"{slot:06d}.text"] = text
        if extra:
            self._tensors[f"{slot:06d}.rejected"] = extra[0]
        if len(self._records) >= self.shard_size:
            self.flush()

    def flush(self) -> str | None:
        """Write the pending samples as one shard (and its sidecar); returns its name."""
        if not self._records:
            return None
        name = f"{self.prefix}-{self.seq:06d}{SHARD_SUFFIX}"
        records = [{**r, "shard": name} for r in self._records]
        data = save_safetensors(self._tensors, metadata={"format": FORMAT})
        self._write_atomic(name, data)
        sidecar = {"format": FORMAT, "shard": name, "bytes": len(data), "samples": records}
        self._write_atomic(name[: -len(SHARD_SUFFIX)] + SIDECAR_SUFFIX, json.dumps(sidecar).encode())
        self.written.append(name)
        self.seq += 1
        self._records, self._tensors = [], {}
        return name

    def _write_atomic(self, name: str, data: bytes) -> None:
        target = f"{self.path}/{name}"
        if is_local(self.fs):
            tmp = f"{target}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        else:
            self.fs.pipe_file(target, data)

    def close(self) -> None:
        self.flush()


def list_sidecars(root: str) -> list[dict[str, Any]]:
    """The sidecars of every complete shard under `root`, sorted by shard name."""
    fs, path = split_url(root)
    if not fs.exists(path):
        return []
    out = []
    for name in sorted(fs.glob(f"{path}/*{SIDECAR_SUFFIX}")):
        with fs.open(name, "rb") as f:
            try:
                sidecar = json.loads(f.read())
            except json.JSONDecodeError:
                warnings.warn(f"shard sidecar {name} is unreadable; its shard is ignored", stacklevel=2)
                continue
        if isinstance(sidecar, dict) and sidecar.get("format") == FORMAT:
            out.append(sidecar)
    return out


def write_index(root: str) -> int:
    """(Re)build `index.parquet` from the sidecars; returns the number of samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [r for sidecar in list_sidecars(root) for r in sidecar["samples"]]
    columns = {name: [kind(r[name]) for r in records] for name, kind in INDEX_COLUMNS.items()}
    for name, kind in PREFERENCE_COLUMNS.items():
        if any(name in r for r in records):
            columns[name] = [None if r.get(name) is None else kind(r[name]) for r in records]
    fs, path = split_url(root)
    with fs.open(f"{path}/{INDEX_NAME}", "wb") as f:
        pq.write_table(pa.table(columns), f)
    return len(records)


def read_index(root: str) -> list[dict[str, Any]]:
    """Every sample record of a shard set, from `index.parquet` or, without one, the sidecars."""
    import pyarrow.parquet as pq

    fs, path = split_url(root)
    index = f"{path}/{INDEX_NAME}"
    if fs.exists(index):
        with fs.open(index, "rb") as f:
            return pq.read_table(f).to_pylist()
    records = [r for sidecar in list_sidecars(root) for r in sidecar["samples"]]
    if not records:
        raise ShardError(f"no shards (and no {INDEX_NAME}) under {root}")
    return records


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class ShardStore:
    """Reads samples of one shard set. Remote shards are copied whole into `cache_dir` on first
    use (atomically, once per shard even with many threads) and read from there afterwards."""

    def __init__(self, root: str, cache_dir: str = ""):
        self.root = str(root)
        self.fs, self.path = split_url(self.root)
        self.local = is_local(self.fs)
        digest = hashlib.sha1(self.root.encode()).hexdigest()[:16]
        base = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "mugv" / "shards"
        self.cache_dir = base / digest
        self._locks: dict[str, threading.Lock] = {}
        self._headers: dict[str, tuple[dict[str, Any], int]] = {}
        self._guard = threading.Lock()

    def url(self, shard: str) -> str:
        return f"{self.path}/{shard}"

    def check(self, shard: str) -> str | None:
        """Why `shard` is unusable (missing, truncated, corrupt header), or None when it is fine.
        Reads only the header, so it is cheap on remote storage too."""
        url = self.url(shard)
        try:
            if not self.fs.exists(url):
                return "missing"
            size = self.fs.size(url)
            with self.fs.open(url, "rb") as f:
                header, expected = read_header(f)
        except ShardError as exc:
            return str(exc)
        except OSError as exc:
            return f"unreadable ({exc})"
        if size != expected:
            return f"truncated: {size} bytes, its header needs {expected}"
        meta = header.get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            return f"not a {FORMAT} shard"
        return None

    def local_path(self, shard: str) -> str:
        if self.local:
            return self.url(shard)
        target = self.cache_dir / shard
        if target.is_file():
            return str(target)
        with self._guard:
            lock = self._locks.setdefault(shard, threading.Lock())
        with lock:
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f"{target.name}.tmp{os.getpid()}.{threading.get_ident()}")
                self.fs.get_file(self.url(shard), str(tmp))
                os.replace(tmp, target)
        return str(target)

    def _layout(self, path: str) -> tuple[dict[str, Any], int]:
        """A shard's tensor table and where its data starts (cached: shards never change)."""
        cached = self._headers.get(path)
        if cached is None:
            with open(path, "rb") as f:
                header, _ = read_header(f)
                cached = self._headers[path] = (header, f.tell())
        return cached

    def read(self, records: Iterable[dict[str, Any]], verify: bool = True) -> list[tuple[torch.Tensor, ...]]:
        """(latents, text) of each record, in order, and a preference pair's rejected latents third.
        A sample whose bytes fail their CRC32 raises ShardError naming the shard and slot. Bytes are
        read with `readinto` and checked with zlib, both outside the GIL, so loader threads do not
        stall the training thread."""
        records = list(records)
        out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(records)
        by_shard: dict[str, list[int]] = {}
        for i, r in enumerate(records):
            by_shard.setdefault(r["shard"], []).append(i)
        for shard, positions in by_shard.items():
            path = self.local_path(shard)
            try:
                header, start = self._layout(path)
                with open(path, "rb", buffering=0) as f:
                    for i in positions:
                        slot = int(records[i]["slot"])
                        pair, crc = [], 0
                        parts = ("latents", "text", "rejected") if f"{slot:06d}.rejected" in header else (
                            "latents", "text")
                        for part in parts:
                            entry = header[f"{slot:06d}.{part}"]
                            begin, end = entry["data_offsets"]
                            buf = bytearray(end - begin)
                            f.seek(start + begin)
                            if f.readinto(buf) != len(buf):
                                raise ShardError(f"shard {shard}: sample {slot} is cut short")
                            if verify:
                                crc = zlib.crc32(buf, crc)
                            pair.append(_tensor(buf, entry))
                        if verify and crc != int(records[i]["crc32"]):
                            raise ShardError(f"shard {shard}: sample {slot} fails its CRC32 check (corrupt data)")
                        out[i] = tuple(pair)
            except ShardError:
                raise
            except (OSError, KeyError, ValueError) as exc:
                raise ShardError(f"shard {shard}: unreadable ({type(exc).__name__}: {exc})") from exc
        return out  # type: ignore[return-value]


_DTYPES = {"BF16": (np.uint16, torch.bfloat16), "F16": (np.float16, None), "F32": (np.float32, None)}


def _tensor(buf: bytearray, entry: dict[str, Any]) -> torch.Tensor:
    """A tensor over `buf` (no copy) from a safetensors header entry."""
    if entry["dtype"] not in _DTYPES:
        raise ValueError(f"unsupported dtype {entry['dtype']}")
    np_dtype, view = _DTYPES[entry["dtype"]]
    array = np.frombuffer(buf, dtype=np_dtype).reshape(entry["shape"])
    t = torch.from_numpy(array)
    return t.view(view) if view is not None else t
