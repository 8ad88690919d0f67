"""`mugv encode` on a tiny manifest: tiny VAE, tiny T5, resume, vanished files, then training."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mugv.cli import main
from mugv.curate.manifest import to_table
from mugv.data.buckets import Bucket, parse_buckets
from mugv.data.encode import EncodeOptions, VAELatentEncoder, encode_worker, fit_to_bucket, run_encode, to_pixels
from mugv.data.shards import REPORT_NAME, ShardStore, read_index, write_index
from mugv.models.text import build_text_encoder, with_aesthetic
from mugv.models.text.tiny import make_tiny_t5
from mugv.models.vae import VAE_PRESETS
from mugv.video import write_mp4

from numerics_testing import assert_close_to_scale

BUCKETS = "1x32x32,1x32x48,9x32x32,9x32x48"


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return make_tiny_t5(tmp_path_factory.mktemp("t5"))


def clip(path, frames, height, width, seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 4, width // 4, 3), dtype=np.uint8)
    video = [np.roll(np.kron(base, np.ones((4, 4, 1), np.uint8)), i, axis=1) for i in range(frames)]
    write_mp4(path, video, fps=12)
    return video


def manifest_row(clip_id, path, start, end, width, height, status="kept", caption="a cat walks on the street"):
    return {"clip_id": clip_id, "video_id": clip_id.split("-")[0], "path": str(path), "clip_index": 0,
            "start_frame": start, "end_frame": end, "fps": 12.0, "width": width, "height": height,
            "status": status, "reason": "" if status == "kept" else "blurry", "caption": caption}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    clip(d / "wide.mp4", 14, 48, 80, 0)
    clip(d / "square.mp4", 12, 40, 40, 1)
    clip(d / "short.mp4", 4, 40, 64, 2)
    rows = [
        manifest_row("wide-0000", d / "wide.mp4", 0, 14, 80, 48),
        manifest_row("wide-0001", d / "wide.mp4", 2, 12, 80, 48, caption="a dog runs in the forest"),
        manifest_row("square-0000", d / "square.mp4", 0, 12, 40, 40),
        manifest_row("short-0000", d / "short.mp4", 0, 4, 64, 40),  # too short for a video bucket
        manifest_row("gone-0000", d / "vanished.mp4", 0, 10, 64, 40),  # the file has vanished
        manifest_row("bad-0000", d / "square.mp4", 0, 12, 40, 40, status="rejected"),
    ]
    pq.write_table(to_table(rows), d / "manifest.parquet")
    return d / "manifest.parquet"


def test_fit_to_bucket_and_pixel_range():
    frames = np.random.default_rng(0).integers(0, 256, (20, 50, 90, 3), dtype=np.uint8)
    fitted = fit_to_bucket(frames, Bucket(9, 32, 48))
    assert fitted.shape == (9, 32, 48, 3)
    pixels = to_pixels(fitted)
    assert pixels.shape == (1, 3, 9, 32, 48) and pixels.min() >= -1 and pixels.max() <= 1
    extremes = to_pixels(np.array([[[[0, 255, 128]]]], dtype=np.uint8))
    assert extremes.flatten().tolist() == pytest.approx([-1.0, 1.0, 128 / 127.5 - 1], abs=1e-6)  # [-1, 1], not [0, 1]


def test_t5_encoder_from_a_local_folder_keeps_masks(tiny_t5):
    enc = build_text_encoder("t5", str(tiny_t5), max_tokens=300)
    out = enc.encode([with_aesthetic("a cat walks"), "dog"])
    assert enc.dim == 32 and out.states.shape[:2] == out.mask.shape
    assert out.mask.sum(1).tolist() == [11, 2]  # 3 words + "aesthetic score : 6 . 0 ." + </s>; "dog" + </s>
    assert torch.all(out.states[1, 2:] == 0) and out.states[1, :2].abs().sum() > 0
    assert [t.shape[0] for t in out.trimmed()] == [11, 2]
    # padding does not change the real tokens' states (the mask reaches the encoder)
    alone = enc.encode(["dog"]).states[0]
    assert_close_to_scale(alone, out.states[1, :2])
    assert build_text_encoder("t5", str(tiny_t5), max_tokens=4).encode(["a cat walks on the street"]).mask.shape[1] == 4
    assert with_aesthetic("a cat walks.") == "a cat walks. aesthetic score: 6.0."
    half = build_text_encoder("t5", str(tiny_t5), dtype="bf16")
    assert half.model.dtype == torch.bfloat16
    assert_close_to_scale(half.encode(["dog"]).states[0], alone, rel=3e-2)  # bf16: measured 7e-3


def test_minilm_gives_384_wide_token_states():
    enc = build_text_encoder("minilm")
    out = enc.encode(["a red car drives through the city aesthetic score: 6.0.", "a cat"])
    assert enc.dim == 384 and out.states.shape[2] == 384
    assert out.mask.sum(1).tolist()[1] == 4  # [CLS] a cat [SEP]
    assert out.states[0].std() > 0.1


def test_encode_writes_shards_and_skips_bad_rows_then_resumes(manifest, tiny_t5, tmp_path):
    out = tmp_path / "shards"
    opts = EncodeOptions(manifest=str(manifest), out=str(out), buckets=parse_buckets(BUCKETS), text_encoder="t5",
                         text_encoder_path=str(tiny_t5), vae_preset="tiny", random_vae=True, shard_size=2,
                         progress=False)
    with pytest.warns(UserWarning) as caught:
        summary = run_encode(opts)
    messages = " ".join(str(w.message) for w in caught)
    assert "gone-0000" in messages and "vanished" in messages
    assert summary.encoded == 3 and summary.skipped == {"missing_file": 1, "no_bucket": 1}
    records = {r["clip_id"]: r for r in read_index(str(out))}
    assert set(records) == {"wide-0000", "wide-0001", "square-0000"}
    assert records["wide-0000"]["bucket"] == "9x32x48" and records["square-0000"]["bucket"] == "9x32x32"
    assert (records["wide-0000"]["latent_frames"], records["wide-0000"]["latent_height"],
            records["wide-0000"]["latent_width"]) == (2, 4, 6)
    assert records["wide-0000"]["text_dim"] == 32 and records["wide-0000"]["fps"] == 12.0
    report = [json.loads(line) for line in (out / REPORT_NAME).read_text().splitlines()]
    assert {(r["clip_id"], r["reason"]) for r in report} == {("gone-0000", "missing_file"), ("short-0000", "no_bucket")}

    # The stored latents are the VAE's normalised latents of the bucket-fitted clip, normalised once.
    latents, text = ShardStore(str(out)).read([records["square-0000"]])[0]
    assert latents.dtype == torch.bfloat16 and latents.shape == (24, 2, 4, 4)
    assert text.shape == (records["square-0000"]["text_tokens"], 32)
    enc = build_text_encoder("t5", str(tiny_t5))
    expected = enc.encode([with_aesthetic("a cat walks on the street")]).trimmed()[0]
    assert_close_to_scale(text.float(), expected, rel=1e-2)  # stored in bf16

    # Rerunning skips what is done; deleting a shard's sidecar re-encodes only its samples.
    again = run_encode(opts)
    assert again.encoded == 0 and again.already_done == 3
    sidecar = sorted(out.glob("w00-*.json"))[0]
    lost = {r["clip_id"] for r in json.loads(sidecar.read_text())["samples"]}
    sidecar.unlink()
    (out / sidecar.name.replace(".json", ".safetensors")).unlink()
    with pytest.warns(UserWarning):
        third = run_encode(opts)
    assert third.encoded == len(lost) and len(read_index(str(out))) == 3


def test_encoded_latents_are_normalised_once(tmp_path):
    """With the MUG-V constants, the encoder gives (mode - mean) / std of the VAE's raw latents."""
    const = VAE_PRESETS["mugv"]
    tiny = dataclasses.replace(VAE_PRESETS["tiny"])
    tiny.latent_mean, tiny.latent_std = const.latent_mean, const.latent_std
    opts = EncodeOptions(manifest="", out=str(tmp_path), vae_preset="tiny", random_vae=True)
    enc = VAELatentEncoder(opts, tiny)
    frames = np.random.default_rng(3).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    pixels = to_pixels(frames)
    z = enc.encode(pixels)
    raw = enc.vae.encode_posterior(pixels).mode()
    mean = torch.tensor(const.latent_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(const.latent_std).view(1, -1, 1, 1, 1)
    assert_close_to_scale(z, (raw - mean) / std)


def test_the_vae_precision_changes_the_compute_not_the_latents_dtype(tmp_path):
    """bf16 latents are float32, near the fp32 ones; an unknown precision is refused up front."""
    from mugv.data.encode import check_options
    from mugv.errors import ConfigError

    pixels = to_pixels(np.random.default_rng(4).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8))
    latents = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        opts = EncodeOptions(manifest="", out=str(tmp_path), vae_preset="tiny", random_vae=True,
                             vae_precision=precision)
        latents[precision] = VAELatentEncoder(opts).encode(pixels)
    assert latents["bf16"].dtype == latents["fp32"].dtype == torch.float32
    assert not torch.equal(latents["bf16"], latents["fp32"])
    # random weights amplify bf16 rounding (about 5 % of scale; tests/vae/test_precision.py)
    assert_close_to_scale(latents["bf16"], latents["fp32"], rel=0.1)
    with pytest.raises(ConfigError, match="vae_precision = 'fp16'"):
        check_options(EncodeOptions(manifest="", out=str(tmp_path), vae_precision="fp16"))


def test_encode_cli_and_strict(manifest, tiny_t5, tmp_path, capsys):
    out = tmp_path / "cli"
    common = [str(manifest), "--out", str(out), "--buckets", BUCKETS, "--text-encoder", "t5", "--text-encoder-path",
              str(tiny_t5), "--vae-preset", "tiny", "--random-vae", "--no-progress"]
    assert main(["encode", *common, "--strict"]) == 2
    assert "gone-0000" in capsys.readouterr().err  # the first bad row stops a strict run, by name
    with pytest.warns(UserWarning):
        assert main(["encode", *common, "--shard-size", "2", "--also-images"]) == 0
    said = capsys.readouterr().out
    assert "encoded 3 clip(s) into 3 new shard(s)" in said and "VAE precision: fp32 (auto on cpu)" in said
    records = {r["key"]: r for r in read_index(str(out))}
    assert len(records) == 6  # each clip as a video and its middle frame as an image
    image = records["wide-0000:image"]
    assert (image["kind"], image["bucket"], image["latent_frames"]) == ("image", "1x32x48", 1)
    assert image["text_tokens"] == records["wide-0000"]["text_tokens"]


def test_workers_split_the_rows_and_write_their_own_shards(manifest, tiny_t5, tmp_path):
    """What each of `--workers 2` processes does (run here in-process: spawning costs ~10 s each)."""
    out = tmp_path / "split"
    opts = EncodeOptions(manifest=str(manifest), out=str(out), buckets=parse_buckets(BUCKETS), text_encoder="t5",
                         text_encoder_path=str(tiny_t5), vae_preset="tiny", random_vae=True, progress=False)
    with pytest.warns(UserWarning):
        parts = [encode_worker(opts, w, 2) for w in range(2)]
    assert [p.encoded for p in parts] == [2, 1]  # kept rows by clip_id: gone, short, square, wide-0, wide-1
    write_index(str(out))
    records = read_index(str(out))
    assert sorted(r["clip_id"] for r in records) == ["square-0000", "wide-0000", "wide-0001"]
    assert {r["shard"] for r in records} == {"w00-000000.safetensors", "w01-000000.safetensors"}
