import pytest
import torch

from mugv.config import ConfigError, load_config
from mugv.models.vae import MUGV_LATENT_MEAN, MUGV_LATENT_STD, DiagonalGaussian, MUGVideoVAE, VAEConfig

from numerics_testing import assert_close_to_scale
from vae_testing import clone_with, random_video

# The tiny fp32 VAE computed two ways (another clip length, chunking, decode crop) differs by up
# to 5e-6 of the output's scale across CPUs' SIMD paths (ATEN_CPU_CAPABILITY default, avx2, avx512).
VAE_REL = 5e-5


@pytest.mark.parametrize(
    ("frames", "size", "latent_frames"),
    [(1, 32, 1), (8, 32, 1), (9, 32, 2), (17, 32, 3), (105, 8, 14)],
)
def test_encode_decode_shapes(tiny_vae, frames, size, latent_frames):
    video = random_video(frames, size, size + 8)
    with torch.no_grad():
        z = tiny_vae.encode(video)
        assert z.shape == (1, 24, latent_frames, size // 8, (size + 8) // 8)
        assert z.shape[1:] == tiny_vae.latent_shape(frames, size, size + 8)
        out = tiny_vae.decode(z, num_frames=frames)
    assert out.shape == video.shape
    assert torch.isfinite(out).all()


def test_decode_defaults_to_eight_frames_per_latent(tiny_vae):
    with torch.no_grad():
        out = tiny_vae.decode(torch.randn(1, 24, 3, 2, 2))
    assert out.shape == (1, 3, 24, 16, 16)


def test_image_is_one_latent_frame_equal_to_first_latent_of_clip(tiny_vae):
    # A clip of 8n + 1 frames replicates frame 0 into its own group, so its first latent frame
    # is exactly the latent of frame 0 encoded as an image.
    clip = random_video(17, 16, 16, seed=3)
    with torch.no_grad():
        image_latent = tiny_vae.encode(clip[:, :, :1])
        clip_latent = tiny_vae.encode(clip)
    assert image_latent.shape[2] == 1
    assert_close_to_scale(image_latent[:, :, 0], clip_latent[:, :, 0], rel=VAE_REL)
    # Later latents depend on later frames, not on frame 0's group.
    assert not torch.allclose(clip_latent[:, :, 1], clip_latent[:, :, 0])


def test_zero_padding_and_its_crop_sit_at_the_front_of_the_last_chunk(tiny_vae):
    # 50 frames: the first 48-frame chunk is encoded unpadded (exactly as 48 frames alone), the
    # last 2 frames get 6 zero frames in front of them; decode drops those 6 and nothing else.
    video = random_video(50, 8, 8, seed=6)
    with torch.no_grad():
        z = tiny_vae.encode(video)
        assert_close_to_scale(z[:, :, :6], tiny_vae.encode(video[:, :, :48]), rel=VAE_REL)
        whole, cropped = tiny_vae.decode(z), tiny_vae.decode(z, num_frames=50)
    assert_close_to_scale(cropped[:, :, :48], whole[:, :, :48], rel=VAE_REL)
    assert_close_to_scale(cropped[:, :, 48:], whole[:, :, 54:], rel=VAE_REL)


@pytest.mark.parametrize("frames", [49, 57, 105])
def test_decode_of_encode_returns_input_frame_i_as_frame_i(tiny_vae, frames):
    # A clip of 8k + 1 frames is encoded exactly as the 8k + 8 frames in which frame 0 shows 8
    # times (a multiple of 8: no padding, and decoded with no crop), so frame j + 7 of that
    # decode reconstructs input frame j. decode(z, frames) drops those 7 extra showings, as
    # training's forward does. Past one 48-frame chunk the release's crop drops 7 real frames at
    # the front of the last chunk instead and keeps the copies: crop="release".
    video = random_video(frames, 8, 8, seed=frames)
    frame_0_shown_8_times = torch.cat([video[:, :, :1].expand(-1, -1, 7, -1, -1), video], dim=2)
    with torch.no_grad():
        z = tiny_vae.encode(video)
        # At 8 x 8 the deepest GroupNorms see 4 values each and amplify reduction-order noise.
        assert_close_to_scale(z, tiny_vae.encode(frame_0_shown_8_times), rel=1e-4)
        shown = tiny_vae.decode(z)
        decoded, release = tiny_vae.decode(z, num_frames=frames), tiny_vae.decode(z, frames, crop="release")
        recon, _ = tiny_vae(video, sample=False)
    assert decoded.shape == release.shape == video.shape
    assert_close_to_scale(decoded, shown[:, :, 7:], rel=VAE_REL)
    assert_close_to_scale(recon, decoded, rel=VAE_REL)
    last_chunk = 48 * ((frames - 1) // 48)  # first frame of the last 48-frame chunk of 8k + 8
    assert_close_to_scale(release[:, :, :last_chunk], shown[:, :, :last_chunk], rel=VAE_REL)
    assert_close_to_scale(release[:, :, last_chunk:], shown[:, :, last_chunk + 7 :], rel=VAE_REL)


def test_release_crop_differs_only_at_1_mod_8_frames_past_one_chunk(tiny_vae):
    differing = []
    for frames in range(1, 8 * 20 + 1):
        latent_frames = tiny_vae.cfg.latent_frames(frames)
        aligned = tiny_vae._crop(latent_frames, frames, "aligned")
        release = tiny_vae._crop(latent_frames, frames, "release")
        assert aligned.stop - aligned.start == release.stop - release.start == 8 * latent_frames - frames
        if aligned != release:
            differing.append(frames)
    assert differing == list(range(49, 8 * 20, 8))
    # With the whole clip as one encode chunk the two crops are the same at every length.
    unpadded = clone_with(tiny_vae, encode_chunk_frames=0)
    assert all(unpadded._crop(14, frames, "aligned") == unpadded._crop(14, frames, "release") for frames in range(105, 113))


def test_decode_rejects_unknown_crops(tiny_vae):
    with pytest.raises(ValueError, match="crop must be one of 'aligned', 'release', not 'front'"):
        tiny_vae.decode(torch.randn(1, 24, 2, 1, 1), num_frames=9, crop="front")


def test_decode_rejects_frame_counts_the_latents_cannot_hold(tiny_vae):
    z = torch.randn(1, 24, 2, 2, 2)
    with pytest.raises(ValueError, match="not 8"):
        tiny_vae.decode(z, num_frames=8)
    with pytest.raises(ValueError, match="not 17"):
        tiny_vae.decode(z, num_frames=17)


def test_bad_input_shapes_are_rejected(tiny_vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        tiny_vae.encode(torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(ValueError, match="expected video"):
        tiny_vae.encode(torch.zeros(1, 4, 1, 16, 16))


def test_time_chunked_encode_equals_whole_clip(tiny_vae):
    # Frame groups are encoded independently, so chunking the encoder in time is exact (at 1 mod
    # 8 frames; at other lengths the chunk length decides where the zero padding goes).
    video = random_video(33, 16, 16, seed=4)
    whole = clone_with(tiny_vae, encode_chunk_frames=0)
    chunked = clone_with(tiny_vae, encode_chunk_frames=8)
    with torch.no_grad():
        assert_close_to_scale(chunked.encode_moments(video), whole.encode_moments(video), rel=VAE_REL)


def test_decode_chunks_are_independent(tiny_vae):
    # Decoding runs in chunks of `decode_chunk_latents` without overlap: the frames of a chunk
    # depend only on its own latents.
    z = torch.randn(1, 24, 4, 2, 2, generator=torch.Generator().manual_seed(5))
    model = clone_with(tiny_vae, decode_chunk_latents=2)
    changed = z.clone()
    changed[:, :, 3] += 1.0
    with torch.no_grad():
        a, b = model.decode(z), model.decode(changed)
    assert torch.equal(a[:, :, :16], b[:, :, :16])  # the same first chunk, computed the same way
    assert not torch.allclose(a[:, :, 16:], b[:, :, 16:])


def test_posterior_sample_and_mode():
    moments = torch.cat([torch.randn(2, 4, 1, 3, 3), torch.full((2, 4, 1, 3, 3), -2.0)], dim=1)
    post = DiagonalGaussian(moments)
    assert torch.equal(post.mode(), moments[:, :4])
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, post.mode())
    torch.testing.assert_close((a - post.mode()).std(), torch.tensor(torch.exp(torch.tensor(-1.0)).item()), atol=0.15, rtol=0)
    standard = DiagonalGaussian(torch.zeros(1, 8, 1, 2, 2))
    assert torch.equal(standard.kl(), torch.zeros(1))
    assert (post.kl() > 0).all()


def test_encode_sample_uses_posterior_noise(tiny_vae):
    video = random_video(8, 16, 16)
    with torch.no_grad():
        mode = tiny_vae.encode(video)
        sample = tiny_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(0))
        again = tiny_vae.encode(video, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample, again) and not torch.allclose(sample, mode)


def test_mugv_preset_normalises_with_published_constants():
    with torch.device("meta"):
        model = MUGVideoVAE(VAEConfig.from_preset("mugv"))
    cfg = model.cfg
    assert cfg.latent_channels == 24 and cfg.spatial_factor == 8 and cfg.temporal_factor == 8
    assert cfg.spatial_channels == (128, 256, 512, 512) and cfg.temporal_filters == 128
    assert len(MUGV_LATENT_MEAN) == len(MUGV_LATENT_STD) == 24
    small = MUGVideoVAE(VAEConfig(latent_mean=MUGV_LATENT_MEAN, latent_std=MUGV_LATENT_STD))
    z = torch.randn(2, 24, 1, 2, 2)
    expected = (z - torch.tensor(MUGV_LATENT_MEAN).view(1, 24, 1, 1, 1)) / torch.tensor(MUGV_LATENT_STD).view(1, 24, 1, 1, 1)
    torch.testing.assert_close(small.normalize(z), expected)
    torch.testing.assert_close(small.denormalize(small.normalize(z)), z)


def test_forward_backward_reaches_every_parameter(tiny_vae):
    model = clone_with(tiny_vae).train()
    recon, posterior = model(random_video(9, 16, 16), generator=torch.Generator().manual_seed(0))
    assert recon.shape == (1, 3, 9, 16, 16)
    (recon.square().mean() + 1e-6 * posterior.kl().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="vae.spatial_channels"):
        VAEConfig(spatial_channels=(12, 16), spatial_groups=8).validate()
    with pytest.raises(ConfigError, match="vae.tile_size"):
        VAEConfig(tile_size=20).validate()
    with pytest.raises(ConfigError, match="vae.latent_std"):
        VAEConfig(latent_std=(1.0,) * 3).validate()


def test_preset_overrides_through_config_loader():
    cfg = load_config(None, ["--preset=mugv", "--tile_size=256"], cls=VAEConfig)
    assert cfg.temporal_filters == 128 and cfg.tile_size == 256


def _low_rank_features(rank: int, seed: int = 0) -> list[torch.Tensor]:
    """Spatial features (B, 32, 8k, h, w) whose stacked frame groups (256 values per position)
    lie in an affine subspace of dimension `rank`: a 24-dim latent can hold them exactly."""
    g = torch.Generator().manual_seed(seed)
    basis, offset = torch.randn(rank, 8 * 32, generator=g), torch.randn(8 * 32, generator=g)
    tensors = []
    for groups, size in ((2, 4), (1, 2)):  # clips and images differ in length: fit takes both
        coefficients = torch.randn(3, groups, size, size, rank, generator=g)
        stacked = coefficients @ basis + offset  # (B, n, h, w, 8 * 32), frame-major
        tensors.append(stacked.view(3, groups, size, size, 8, 32).permute(0, 5, 1, 4, 2, 3).reshape(3, 32, 8 * groups, size, size))
    return tensors


def test_temporal_shortcut_fit_is_the_pca_of_the_features():
    model = MUGVideoVAE(VAEConfig.from_preset("tiny-shortcut"))
    shortcut = model.temporal.shortcut
    features = _low_rank_features(rank=24)
    with torch.no_grad():
        assert shortcut.fit(features) == pytest.approx(1.0, abs=1e-9)
        for f in features:  # within the subspace: the linear round trip is exact
            assert_close_to_scale(shortcut.decode(shortcut.encode(f)), f, rel=1e-4)
            # frame j of group n is frame 8n + j: encoding reads each group on its own
            assert shortcut.encode(f).shape == (f.shape[0], 24, f.shape[2] // 8, *f.shape[3:])
        # more directions than the latent holds: the 24 largest are kept, and the rest is lost
        kept = shortcut.fit(_low_rank_features(rank=40, seed=1))
    assert 24 / 40 < kept < 1.0


def test_temporal_half_starts_as_its_fitted_shortcut():
    model = MUGVideoVAE(VAEConfig.from_preset("tiny-shortcut"))
    features = _low_rank_features(rank=24)
    temporal = model.temporal
    with torch.no_grad():
        temporal.start_from_shortcut(features)
        for f in features:  # the convolutional paths add nothing yet: the round trip is the PCA's
            mean = temporal.encode(f)[:, :24]
            assert_close_to_scale(temporal.decode(mean), f, rel=1e-4)
    # the silenced last layers still learn
    mean = temporal.encode(features[0])[:, :24]
    temporal.decode(mean).square().mean().backward()
    assert temporal.decoder.conv_out.weight.grad.abs().sum() > 0
    assert temporal.quant_conv.weight.grad[:24].abs().sum() > 0


def test_the_published_layout_has_no_shortcut():
    assert MUGVideoVAE(VAEConfig.from_preset("tiny")).temporal.shortcut is None
    assert not any("shortcut" in name for name in MUGVideoVAE(VAEConfig.from_preset("tiny")).state_dict())
    with pytest.raises(ValueError, match="temporal_shortcut"):
        MUGVideoVAE(VAEConfig.from_preset("tiny")).temporal.start_from_shortcut(_low_rank_features(24))
