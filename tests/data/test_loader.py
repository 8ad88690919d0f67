"""Shards, the balanced bucketed planner and the prefetching loader: resume, disjointness, balance."""

import collections
import json

import pytest

from mugv.config import load_config
from mugv.data.batch import LatentBatch
from mugv.data.buckets import Bucket, assign_bucket, parse_buckets
from mugv.data.loader import ShardSource, sample_costs
from mugv.data.sampler import BatchPlanner, PlanConfig, imbalance
from mugv.data.shards import INDEX_NAME, ShardError, ShardStore, list_sidecars, read_index
from mugv.data.sources import build_data_source
from mugv.data.testing import sample_numbers, write_random_shards
from mugv.models.dit.config import DiTConfig

MIXED = {"1x64x64": 40, "1x64x96": 24, "9x64x64": 20, "17x64x64": 12, "17x96x128": 8}


def data_config(root, *overrides):
    cfg = load_config("debug", ["--data.source=shards", f"--data.shards={root}", *overrides])
    return cfg


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mixed"))
    write_random_shards(root, MIXED, shard_size=10)
    return root


def drain(source, steps):
    return [source.next_batch() for _ in range(steps)]


def numbers(batches):
    return [n for b in batches for n in sample_numbers(b.latents)]


def test_writer_index_and_reader_round_trip(tmp_path):
    n = write_random_shards(str(tmp_path), {"1x32x32": 5, "9x32x48": 4}, shard_size=4)
    assert n == 9 and (tmp_path / INDEX_NAME).is_file()
    sidecars = list_sidecars(str(tmp_path))
    assert [s["shard"] for s in sidecars] == [f"rand-00000{i}.safetensors" for i in range(3)]
    records = read_index(str(tmp_path))
    assert len(records) == 9 and {r["bucket"] for r in records} == {"1x32x32", "9x32x48"}
    video = next(r for r in records if r["bucket"] == "9x32x48")
    assert (video["latent_frames"], video["latent_height"], video["latent_width"]) == (2, 4, 6)
    latents, text = ShardStore(str(tmp_path)).read([video])[0]
    assert latents.shape == (24, 2, 4, 6) and text.shape == (video["text_tokens"], 64)


def test_every_batch_holds_one_bucket_and_more_than_one_sample(mixed):
    cfg = data_config(mixed, "--data.batch_size=2", "--data.prefetch=0")
    source = build_data_source(cfg)
    batches = drain(source, 30)
    by_number = {int(r["key"].split("-")[1]): r["bucket"] for r in source.records}
    for batch in batches:
        assert len({by_number[n] for n in sample_numbers(batch.latents)}) == 1
        assert isinstance(batch, LatentBatch)
    assert max(b.size for b in batches) > 1
    # images (1 frame) and videos of several sizes all appear, each batch with its own pixel size
    assert {(b.latents.shape[2], b.pixel_height, b.pixel_width) for b in batches} >= {(1, 64, 64), (3, 64, 64)}
    assert all(1 <= b.text_mask.sum(1).min() and b.text.shape[1] <= cfg.model.max_text_tokens for b in batches)


@pytest.mark.parametrize("prefetch,workers", [(0, 0), (3, 0), (4, 2)])
def test_resume_continues_exactly_with_no_sample_lost_or_repeated(mixed, prefetch, workers):
    opts = ["--data.batch_size=2", f"--data.prefetch={prefetch}", f"--data.num_workers={workers}"]
    straight = build_data_source(data_config(mixed, *opts))
    reference = numbers(drain(straight, 24))
    straight.close()

    first = build_data_source(data_config(mixed, *opts))
    before = numbers(drain(first, 9))  # the loader has prefetched further than this
    state = json.loads(json.dumps(first.state_dict()))  # it travels through trainer.json
    first.close()
    second = build_data_source(data_config(mixed, *opts))
    second.load_state_dict(state)
    after = numbers(drain(second, 15))
    second.close()
    assert before + after == reference
    # within one pass over the data, nothing is served twice
    epoch_len = sum(MIXED.values())
    assert len(set(reference[: epoch_len // 2])) == len(reference[: epoch_len // 2])


def test_data_parallel_ranks_get_disjoint_samples(mixed):
    world = 3
    cfg = data_config(mixed, "--data.prefetch=2", "--data.batching=fixed").data
    sources = [ShardSource(cfg, DiTConfig(), dp_rank=r, dp_world_size=world) for r in range(world)]
    # 8 steps of 3 x 2 samples stay inside the first epoch of both groups (64 images, 40 videos)
    per_rank = [numbers(drain(s, 8)) for s in sources]
    for s in sources:
        s.close()
    seen = collections.Counter(n for ranks in per_rank for n in ranks)
    assert all(per_rank) and max(seen.values()) == 1, seen.most_common(3)
    # the ranks agree on where they are, so any rank's state resumes all of them
    assert sources[0].state_dict() == sources[1].state_dict() == sources[2].state_dict()


def test_balanced_sampling_keeps_rank_compute_within_ten_percent(mixed):
    model = DiTConfig()
    records = read_index(mixed)
    costs = sample_costs(records, model)
    buckets = [r["bucket"] for r in records]
    groups = [r["kind"] for r in records]
    results = {}
    for name, batching, balance in (("naive", "fixed", False), ("balanced", "cost", True)):
        planner = BatchPlanner(costs, buckets, groups, PlanConfig(batch_size=2, batching=batching, balance=balance,
                                                                 world_size=4))
        steps = [planner.next_step() for _ in range(60)]
        results[name] = imbalance(steps, costs)
    assert results["balanced"] < 1.10, results
    assert results["naive"] > 1.3, results  # the mixed set really is unbalanced without the cost model


def test_cost_batching_gives_cheap_buckets_more_samples(mixed):
    source = build_data_source(data_config(mixed, "--data.batch_size=2", "--data.prefetch=0"))
    sizes = collections.defaultdict(set)
    for batch in drain(source, 40):
        sizes[(batch.latents.shape[2], batch.pixel_height, batch.pixel_width)].add(batch.size)
    assert max(sizes[(3, 96, 128)]) <= 2 and max(sizes[(1, 64, 64)]) == 8  # capped at 4 x batch_size


def test_mixture_control_sets_the_image_share_and_can_change_mid_run(mixed):
    source = build_data_source(data_config(mixed, "--data.image_fraction=0.25", "--data.prefetch=2"))

    def image_share(batches):
        kinds = [(b.latents.shape[2] == 1, b.size) for b in batches]
        return sum(n for img, n in kinds if img) / sum(n for _, n in kinds)

    assert abs(image_share(drain(source, 40)) - 0.25) < 0.08
    source.set_mixture(image_fraction=1.0)  # e.g. a curriculum stage switching to images only
    assert image_share(drain(source, 10)) == 1.0
    source.set_mixture(image_fraction=0.0)
    assert image_share(drain(source, 10)) == 0.0
    state = source.state_dict()
    assert state["weights"] == {"image": 0.0, "video": 1.0}
    source.close()


def test_truncated_and_corrupt_shards_are_reported_by_name_and_skipped(tmp_path):
    root = str(tmp_path)
    write_random_shards(root, {"1x32x32": 12}, shard_size=4)
    truncated = tmp_path / "rand-000001.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    garbage = tmp_path / "rand-000002.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.warns(UserWarning) as caught:
        source = build_data_source(data_config(root, "--data.prefetch=0", "--data.batch_size=2"))
    text = " ".join(str(w.message) for w in caught)
    assert "rand-000001.safetensors" in text and "truncated" in text and "rand-000002.safetensors" in text
    assert set(source.bad_shards) == {"rand-000001.safetensors", "rand-000002.safetensors"}
    served = numbers(drain(source, 2))
    assert len(source.records) == 4 and sorted(served) == sorted(
        int(r["key"].split("-")[1]) for r in source.records)
    with pytest.raises(ShardError, match="rand-000001.safetensors"):
        build_data_source(data_config(root, "--data.strict=true"))


def test_bit_rot_inside_a_sample_is_caught_by_its_checksum(tmp_path):
    root = str(tmp_path)
    write_random_shards(root, {"1x32x32": 4}, shard_size=4)
    shard = tmp_path / "rand-000000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # the last sample's text
    shard.write_bytes(bytes(data))
    strict = build_data_source(data_config(root, "--data.prefetch=0", "--data.batch_size=4", "--data.strict=true"))
    with pytest.raises(ShardError, match="CRC32"):
        strict.next_batch()
    lenient = build_data_source(data_config(root, "--data.prefetch=0", "--data.batch_size=4",
                                            "--data.batching=fixed"))
    with pytest.warns(UserWarning, match="CRC32"):
        batch = lenient.next_batch()
    assert batch.size == 3 and len(lenient.bad_samples) == 1


def test_remote_shards_are_written_and_cached_locally(tmp_path):
    import fsspec

    write_random_shards("memory://set", {"1x32x32": 6}, shard_size=3)  # the writer's fsspec path
    assert sorted(fsspec.filesystem("memory").ls("/set", detail=False)) == [
        "/set/index.parquet", "/set/rand-000000.json", "/set/rand-000000.safetensors",
        "/set/rand-000001.json", "/set/rand-000001.safetensors"]
    cache = tmp_path / "cache"
    source = build_data_source(data_config("memory://set", f"--data.cache_dir={cache}", "--data.batch_size=3",
                                           "--data.batching=fixed", "--data.prefetch=2"))
    assert sorted(numbers(drain(source, 2))) == list(range(6))
    source.close()
    cached = sorted(p.name for p in cache.rglob("*.safetensors"))
    assert cached == ["rand-000000.safetensors", "rand-000001.safetensors"]


def test_bucket_assignment():
    table = parse_buckets("1x256x256,1x256x448,17x256x448,17x448x256,33x256x448,33x512x896")
    assert assign_bucket(table, 1, 720, 1280) == Bucket(1, 256, 448)
    assert assign_bucket(table, 40, 720, 1280) == Bucket(33, 512, 896)  # longest, then largest that fits
    assert assign_bucket(table, 40, 300, 533) == Bucket(33, 256, 448)
    assert assign_bucket(table, 20, 1280, 720) == Bucket(17, 448, 256)
    assert assign_bucket(table, 10, 720, 1280) is None  # too short for any video bucket
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        parse_buckets("16x256x256")


def test_a_new_stage_may_change_the_mixture_but_not_the_world_size(mixed):
    stage1 = build_data_source(data_config(mixed, "--data.image_fraction=0.5", "--data.prefetch=0"))
    drain(stage1, 5)
    state = json.loads(json.dumps(stage1.state_dict()))
    stage2 = build_data_source(data_config(mixed, "--data.image_fraction=0.0", "--data.prefetch=0"))
    stage2.load_state_dict(state)  # the curriculum's new mixture holds from here on
    assert all(b.latents.shape[2] > 1 for b in drain(stage2, 6))
    assert stage2.state_dict()["groups"]["image"]["epoch"] == state["groups"]["image"]["epoch"]
    other = ShardSource(data_config(mixed).data, DiTConfig(), dp_rank=0, dp_world_size=2)
    with pytest.raises(ValueError, match="world_size"):
        other.load_state_dict(state)
