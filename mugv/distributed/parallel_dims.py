"""ParallelDims: the degrees of every parallel axis, their validation, and the device mesh.

Mesh dimensions, outermost first: pp, dp_replicate, dp_shard, cp_ring, cp_ulysses, tp. Neighbouring
ranks differ in tp (the most communication-heavy axis stays within a node). Flattened views:
`cp` = cp_ring x cp_ulysses, `dp_shard_cp` = dp_shard x cp (FSDP2 shards over it, so gradients are
also summed over the context-parallel ranks), `dp` = dp_replicate x dp_shard (the data-parallel
ranks, which see different samples), `cp_tp` = cp x tp (the ranks among which a block's token
sequence is split).
"""

from __future__ import annotations

from dataclasses import dataclass

from mugv.config import ConfigError, ParallelConfig
from mugv.models.dit.config import DiTConfig

MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "cp_ring", "cp_ulysses", "tp")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    cp: int
    pp: int
    world_size: int
    cp_ring: int = 1

    @classmethod
    def from_config(cls, cfg: ParallelConfig, world_size: int, model: DiTConfig | None = None) -> ParallelDims:
        """Resolve dp_shard = -1 and check every constraint; errors name the constraint."""
        cfg.validate()
        fixed = cfg.dp_replicate * cfg.tp * cfg.cp * cfg.pp
        dp_shard = cfg.dp_shard
        if dp_shard == -1:
            if world_size % fixed:
                raise ConfigError(
                    f"world size {world_size} is not divisible by parallel.dp_replicate x tp x cp x pp = "
                    f"{cfg.dp_replicate} x {cfg.tp} x {cfg.cp} x {cfg.pp} = {fixed}, so parallel.dp_shard = -1 "
                    "cannot take the rest"
                )
            dp_shard = world_size // fixed
        dims = cls(cfg.dp_replicate, dp_shard, cfg.tp, cfg.cp, cfg.pp, world_size, cfg.cp_ring)
        dims.validate(model)
        return dims

    def validate(self, model: DiTConfig | None = None) -> None:
        product = self.dp_replicate * self.dp_shard * self.tp * self.cp * self.pp
        if product != self.world_size:
            raise ConfigError(
                f"parallel.dp_replicate x dp_shard x tp x cp x pp = {self.dp_replicate} x {self.dp_shard} x "
                f"{self.tp} x {self.cp} x {self.pp} = {product} must equal the world size {self.world_size}"
            )
        if self.cp % self.cp_ring:
            raise ConfigError(f"parallel.cp_ring = {self.cp_ring} must divide parallel.cp = {self.cp}")
        if model is None:
            return
        heads = model.num_heads
        if heads % (self.tp * self.cp_ulysses):
            raise ConfigError(
                f"model.num_heads = {heads} must be divisible by parallel.tp x ulysses degree "
                f"(= tp x cp / cp_ring = {self.tp} x {self.cp_ulysses} = {self.tp * self.cp_ulysses}): tensor "
                "parallel and Ulysses context parallel split attention by whole heads; raise parallel.cp_ring "
                "to put more of the context-parallel degree on ring attention"
            )
        if self.pp > 1 and model.depth < self.pp:
            raise ConfigError(f"model.depth = {model.depth} blocks cannot fill parallel.pp = {self.pp} pipeline stages")

    @property
    def cp_ulysses(self) -> int:
        return self.cp // self.cp_ring

    @property
    def dp(self) -> int:
        """Ranks that see different samples."""
        return self.dp_replicate * self.dp_shard

    @property
    def sequence_split(self) -> int:
        """How many pieces the token sequence is cut into inside a block (cp, then tp's sequence parallel)."""
        return self.cp * self.tp

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_replicate * self.dp_shard * self.cp > 1

    @property
    def shape(self) -> dict[str, int]:
        return {
            "pp": self.pp, "dp_replicate": self.dp_replicate, "dp_shard": self.dp_shard,
            "cp_ring": self.cp_ring, "cp_ulysses": self.cp_ulysses, "tp": self.tp,
        }

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.shape.items() if v > 1]
        return f"world {self.world_size}: " + (" x ".join(parts) if parts else "single rank")

    def coordinates(self, rank: int) -> dict[str, int]:
        """This rank's index along every mesh dimension (row-major over MESH_DIMS)."""
        coords: dict[str, int] = {}
        rest = rank
        for name in reversed(MESH_DIMS):
            size = self.shape[name]
            coords[name] = rest % size
            rest //= size
        coords["cp"] = coords["cp_ring"] * self.cp_ulysses + coords["cp_ulysses"]
        coords["dp"] = coords["dp_replicate"] * self.dp_shard + coords["dp_shard"]
        return coords

    def build_mesh(self, device_type: str = "cpu") -> ParallelMesh:
        return build_mesh(self, device_type)


class ParallelMesh:
    """The world DeviceMesh plus its flattened views, looked up by name (`mesh["dp_shard_cp"]`)."""

    def __init__(self, root, flat: dict):
        self.root, self.flat = root, flat

    def __getitem__(self, key):
        if isinstance(key, str) and key in self.flat:
            return self.flat[key]
        if isinstance(key, tuple) and any(k in self.flat for k in key):
            import warnings

            with warnings.catch_warnings():  # slicing a flattened dim (HSDP's 2-D mesh)
                warnings.simplefilter("ignore", UserWarning)
                return self.root[key]
        return self.root[key]

    @property
    def device_type(self) -> str:
        return self.root.device_type


def build_mesh(dims: ParallelDims, device_type: str = "cpu") -> ParallelMesh:
    """The world DeviceMesh over MESH_DIMS with the flattened `cp`, `dp_shard_cp`, `dp`, `cp_tp` views."""
    from torch.distributed.device_mesh import init_device_mesh

    names = MESH_DIMS
    root = init_device_mesh(device_type, tuple(dims.shape[n] for n in names), mesh_dim_names=names)
    flat = {
        "cp": root["cp_ring", "cp_ulysses"]._flatten("cp"),
        "dp_shard_cp": root["dp_shard", "cp_ring", "cp_ulysses"]._flatten("dp_shard_cp"),
        "dp": root["dp_replicate", "dp_shard"]._flatten("dp"),
        "cp_tp": root["cp_ring", "cp_ulysses", "tp"]._flatten("cp_tp"),
    }
    return ParallelMesh(root, flat)
