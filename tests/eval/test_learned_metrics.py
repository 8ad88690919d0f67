"""Weight-based metrics on tiny random-weight models saved to a temporary folder, checked
against direct computations; the Fréchet distance against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mugv.config import ConfigError
from mugv.eval import frechet, learned
from mugv.eval.suite import EvalVideo
from mugv.video.synthetic import panning_shot


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("clip")
    words = ["[PAD]", "[UNK]", "a", "red", "circle", "moves", "right", "wall"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, eos_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def video() -> EvalVideo:
    frames = panning_shot(seed=5, frames=17, height=48, width=64, speed=2.0)
    return EvalVideo("pan", "pan.mp4", frames, 12.0, prompt="a red circle moves right")


def test_clip_score_is_the_clamped_cosine_of_clip_embeddings(clip_folder, video):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    metric = learned.clip_score_metric(clip_folder, frames=4)
    value, detail = metric.measure(video)
    model = CLIPModel.from_pretrained(clip_folder).eval()
    tokens = AutoTokenizer.from_pretrained(clip_folder)([video.prompt], return_tensors="pt")
    pixels = CLIPImageProcessor.from_pretrained(clip_folder)(images=list(video.frames[[2, 6, 10, 14]]), return_tensors="pt")
    with torch.no_grad():  # each tower's pooled output through its projection
        text = model.text_projection(model.text_model(**tokens).pooler_output)
        image = model.visual_projection(model.vision_model(**pixels).pooler_output)
    cosine = torch.cosine_similarity(image, text, dim=-1)
    expected = (100 * cosine.clamp_min(0)).numpy()
    np.testing.assert_allclose(detail["frames"], expected, atol=1e-3)
    assert value == pytest.approx(float(expected.mean()), abs=1e-3)
    assert metric.backend == "official" and "same CLIP checkpoint" in metric.comparable_to


def test_clip_score_skips_videos_without_a_prompt(clip_folder, video):
    from mugv.eval.scores import run_metric

    silent = EvalVideo("x", "x.mp4", video.frames, 12.0)
    assert "no prompt" in run_metric(learned.clip_score_metric(clip_folder).measure, silent).skipped


def test_subject_consistency_is_vbench_formula_on_vit_features(tmp_path, video):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=16), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    metric = learned.dino_consistency_metric(tmp_path / "vit")
    assert metric.backend == "proxy"  # not DINO ViT-B/16's shape: it cannot enter a VBench total
    features = learned.DinoFeatures(tmp_path / "vit")(video.frames).numpy()
    expected = np.mean([(max(0, features[t] @ features[0]) + max(0, features[t] @ features[t - 1])) / 2
                        for t in range(1, len(features))])
    assert metric.measure(video) == pytest.approx(expected, rel=1e-6)
    assert learned.subject_consistency(torch.nn.functional.normalize(torch.ones(5, 8), dim=-1)) == pytest.approx(1.0)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    var_a, var_b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2 over the diagonal
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b)) == pytest.approx(expected)
    # full covariances: Tr(A + B - 2 (A^1/2 B A^1/2)^1/2), computed by eigendecompositions
    x, y = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = x @ x.T + np.eye(6), y @ y.T + np.eye(6)

    def sqrt_psd(m):
        values, vectors = np.linalg.eigh(m)
        return vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T

    root_a = sqrt_psd(cov_a)
    direct = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * sqrt_psd(root_a @ cov_b @ root_a))
    assert frechet.frechet_distance(mean_a, cov_a, mean_b, cov_b) == pytest.approx(direct, rel=1e-9)
    assert frechet.frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0.0, abs=1e-8)


class TinyI3d(nn.Module):
    """Stands in for StyleGAN-V's I3D: same call, 400 features from pooled pixels."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        return self.project(x.mean(dim=(2, 3, 4)))


def test_fvd_reads_a_torchscript_i3d_and_is_frechet_of_its_features(tmp_path):
    from mugv.video import write_mp4

    torch.manual_seed(0)
    torch.jit.script(TinyI3d()).save(str(tmp_path / "i3d.pt"))
    extract = frechet.I3dFeatures(tmp_path / "i3d.pt")
    videos = [panning_shot(seed=s, frames=16, height=48, width=64) for s in range(4)]
    reference = []
    for s in range(4):
        write_mp4(tmp_path / f"ref{s}.mp4", panning_shot(seed=10 + s, frames=16, height=48, width=64), fps=12)
        reference.append(tmp_path / f"ref{s}.mp4")
    metric = frechet.fvd_metric(tmp_path / "i3d.pt", reference)
    generated = [metric.collect(EvalVideo(str(i), "", v, 12.0)) for i, v in enumerate(videos)]
    value, detail = metric.finish(generated)
    # the features: the model on [-1, 1] pixels, centre-cropped to 224 after scaling the short side
    features = extract(videos[0])
    assert features.shape == (400,) and np.allclose(features, generated[0])
    from mugv.eval.suite import load_video

    expected_reference = np.stack([extract(load_video(p).frames) for p in reference])
    expected = frechet.frechet_distance(*frechet.gaussian(np.stack(generated)), *frechet.gaussian(expected_reference))
    assert value == pytest.approx(expected) and detail == {"generated_videos": 4, "reference_videos": 4}
    assert metric.collect(EvalVideo("short", "", videos[0][:8], 12.0)) is None  # under 16 frames


def test_missing_weights_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        learned.clip_score_metric(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="i3d.pt"):
        frechet.I3dFeatures(tmp_path / "i3d.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="junk.pt"):
        frechet.I3dFeatures(tmp_path / "junk.pt")


class ConstantFlowNet(nn.Module):
    def forward(self, image1: torch.Tensor, image2: torch.Tensor):
        flow = torch.zeros(1, 2, image1.shape[2], image1.shape[3])
        flow[:, 0] = 10.0  # 10 px to the right everywhere
        return flow - 1.0, flow  # RAFT returns (low-res, upsampled): the last one counts


def test_torchscript_flow_pads_to_eight_and_drives_dynamic_degree(tmp_path, video):
    torch.jit.script(ConstantFlowNet()).save(str(tmp_path / "raft.pt"))
    flow = learned.TorchScriptFlow(tmp_path / "raft.pt")
    assert flow(video.frames[0][:45, :61], video.frames[1][:45, :61]).shape == (48, 64, 2)
    metric = learned.flow_model_dynamic_degree_metric(tmp_path / "raft.pt")
    value, detail = metric.measure(video)
    # 10 px flow everywhere; threshold 6 * 48 / 256 at the video's own size
    assert value == 1.0 and detail["pair_scores"][0] == pytest.approx(10.0)
    assert detail["threshold_px"] == pytest.approx(6 * 48 / 256)
    assert metric.vbench_dimension == "dynamic degree"


def test_the_command_adds_the_metrics_whose_weights_it_is_given(tmp_path, clip_folder):
    import csv
    import json

    from mugv import cli
    from mugv.video import write_mp4

    torch.jit.script(TinyI3d()).save(str(tmp_path / "i3d.pt"))
    for folder, seeds in (("videos", (1, 2)), ("reference", (3, 4))):
        (tmp_path / folder).mkdir()
        for s in seeds:
            write_mp4(tmp_path / folder / f"{s}.mp4", panning_shot(seed=s, frames=16, height=48, width=64), fps=12)
    with open(tmp_path / "prompts.csv", "w", newline="") as f:
        csv.writer(f).writerows([["name", "prompt"], ["1", "a red wall"], ["2", "a circle moves right"]])
    out = tmp_path / "out"
    assert cli.main(["eval", str(tmp_path / "videos"), "--out", str(out), "--prompts", str(tmp_path / "prompts.csv"),
                     "--clip-model", str(clip_folder), "--i3d", str(tmp_path / "i3d.pt"),
                     "--reference", str(tmp_path / "reference")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["clip_score"]["count"] == 2 and summary["metrics"]["clip_score"]["backend"] == "official"
    assert summary["set_metrics"]["fvd"]["value"] >= 0
    assert summary["set_metrics"]["fvd"]["detail"] == {"generated_videos": 2, "reference_videos": 2}
