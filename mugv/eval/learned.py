"""Metrics that need learned weights, read from local paths (nothing is downloaded):

- `clip_score_metric`: CLIPScore (Hessel et al. 2021; torchmetrics' form): 100 * max(cos(image,
  text), 0) between CLIP embeddings of sampled frames and the prompt, averaged over the frames.
  Comparable only between runs with the same CLIP checkpoint.
- `laion_aesthetic_metric`: the LAION improved aesthetic predictor (mugv curate's `LaionScorer`),
  0-10. VBench's aesthetic quality uses the older linear LAION head on CLIP ViT-L/14, so this is a
  proxy for it.
- `dino_consistency_metric`: VBench subject consistency: the mean over frames t >= 1 of
  (max(0, cos(f_t, f_0)) + max(0, cos(f_t, f_t-1))) / 2 on DINO CLS features (frames resized so
  the short side is 224, bilinear without antialiasing, ImageNet-normalised, as VBench).
- `flow_model_dynamic_degree_metric`: VBench's dynamic-degree rule on a TorchScript flow network,
  called at the video's own size as VBench calls RAFT.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mugv.config import ConfigError
from mugv.eval import temporal
from mugv.eval.scores import OFFICIAL, PROXY, Metric, NotMeasurable
from mugv.video import sample_indices

CLIP_FRAMES = 8


def _folder(path: str | Path, what: str) -> Path:
    if not Path(path).is_dir():
        raise ConfigError(f"{what} folder not found: {path}")
    return Path(path)


class ClipScorer:
    """CLIP image and text towers from a local `transformers` folder."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        folder = _folder(folder, "CLIP model")
        self.device = device
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        self.name = self.model.config.name_or_path or folder.name

    def __call__(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        """100 * max(cos, 0) of each frame with the prompt."""
        import torch
        import torch.nn.functional as F

        length = self.model.config.text_config.max_position_embeddings
        text = self.tokenizer([prompt], padding=True, truncation=True, max_length=length, return_tensors="pt")
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model(input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device),
                             pixel_values=pixels.to(self.device))
        cosine = F.normalize(out.image_embeds, dim=-1) @ F.normalize(out.text_embeds, dim=-1).T
        return (100 * cosine.clamp_min(0)).squeeze(1).double().cpu().numpy()


def clip_score_metric(folder: str | Path, device: str = "cpu", frames: int = CLIP_FRAMES) -> Metric:
    scorer = ClipScorer(folder, device)

    def measure(video) -> tuple[float, dict]:
        if not video.prompt:
            raise NotMeasurable("no prompt for this video (give --prompts)")
        scores = scorer(video.frames[sample_indices(0, len(video.frames), frames)], video.prompt)
        return float(scores.mean()), {"frames": [round(float(s), 3) for s in scores]}

    return Metric("clip_score", OFFICIAL, f"CLIPScore with the same CLIP checkpoint ({scorer.name}), {frames} frames",
                  True, "100 * max(cos(CLIP image, CLIP text), 0), mean over evenly spaced frames", measure)


def laion_aesthetic_metric(clip_folder: str | Path, head_weights: str | Path, device: str = "cpu",
                           frames: int = CLIP_FRAMES) -> Metric:
    from mugv.curate.aesthetic import LaionScorer

    if not Path(head_weights).is_file():
        raise ConfigError(f"LAION head weights not found: {head_weights}")
    scorer = LaionScorer(str(_folder(clip_folder, "CLIP vision model")), str(head_weights), device)

    def measure(video) -> float:
        return scorer.score(video.frames[sample_indices(0, len(video.frames), frames)])

    return Metric("laion_aesthetic", PROXY,
                  f"LAION improved-aesthetic-predictor scores with the same CLIP and head; not VBench aesthetic quality "
                  f"(its linear head), {frames} frames", True, "LAION aesthetic score, 0-10", measure,
                  vbench_dimension="aesthetic quality")


class DinoFeatures:
    """CLS features of a ViT (`transformers` ViTModel folder, e.g. DINO ViT-B/16) per frame."""

    def __init__(self, folder: str | Path, device: str = "cpu"):
        from transformers import ViTModel

        self.model = ViTModel.from_pretrained(_folder(folder, "DINO model"), add_pooling_layer=False,
                                              local_files_only=True).to(device).eval()
        self.device = device
        config = self.model.config
        self.is_vit_b16 = (config.hidden_size, config.num_hidden_layers, config.patch_size) == (768, 12, 16)

    def __call__(self, frames: np.ndarray):
        import torch
        import torch.nn.functional as F

        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        height, width = video.shape[-2:]
        short = 224
        size = (short, int(short * width / height)) if height <= width else (int(short * height / width), short)
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=False) / 255
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            out = self.model(pixel_values=((video - mean) / std).to(self.device), interpolate_pos_encoding=True)
        return F.normalize(out.last_hidden_state[:, 0].double().cpu(), dim=-1)


def subject_consistency(features) -> float:
    """VBench's formula on L2-normalised per-frame features [T, D]."""
    if len(features) < 2:
        raise NotMeasurable("subject consistency needs at least 2 frames")
    to_first = (features[1:] @ features[0]).clamp_min(0)
    to_previous = (features[1:] * features[:-1]).sum(dim=1).clamp_min(0)
    return float(((to_first + to_previous) / 2).mean())


def dino_consistency_metric(folder: str | Path, device: str = "cpu") -> Metric:
    extract = DinoFeatures(folder, device)
    official = extract.is_vit_b16
    return Metric("subject_consistency", OFFICIAL if official else PROXY,
                  "VBench subject consistency, if the folder holds DINO ViT-B/16's weights (its mean is per video, "
                  "VBench's per frame)" if official else "other mugv eval runs with the same ViT (not VBench's DINO "
                  "ViT-B/16)", True, "mean over frames of (cos to the first frame + cos to the previous frame) / 2 "
                  "on DINO features", lambda video: subject_consistency(extract(video.frames)),
                  vbench_dimension="subject consistency")


class TorchScriptFlow:
    """A flow network saved as TorchScript: forward(image1, image2) with float [1, 3, H, W] in
    0-255 returning flow [1, 2, H, W] (or a tuple / list ending with it), as RAFT's test mode.
    Frames are padded by edge replication to a multiple of 8 on both sides, as RAFT's padder."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        import torch

        if not Path(path).is_file():
            raise ConfigError(f"flow TorchScript file not found: {path}")
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = device

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        height, width = first.shape[:2]
        pad_h, pad_w = (-height) % 8, (-width) % 8
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)

        def tensor(frame: np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
            return F.pad(image, padding, mode="replicate").to(self.device)

        with torch.no_grad():
            flow = self.model(tensor(first), tensor(second))
        flow = flow[-1] if isinstance(flow, (tuple, list)) else flow
        return flow[0].permute(1, 2, 0).float().cpu().numpy()


def flow_model_dynamic_degree_metric(path: str | Path, device: str = "cpu") -> Metric:
    flow = TorchScriptFlow(path, device)

    def measure(video) -> tuple[float, dict]:
        reading = temporal.dynamic_degree(video.frames, video.fps, flow=flow, short_side=max(video.frames.shape[1:3]))
        return float(reading.moving), reading.detail()

    return Metric("dynamic_degree_raft", OFFICIAL,
                  f"VBench dynamic degree, if {Path(path).name} is VBench's RAFT (raft-things, 20 iterations) in TorchScript",
                  True, "1 if the video moves by VBench's rule on the given flow network, else 0", measure,
                  vbench_dimension="dynamic degree")
