"""Stage: captions. An existing caption wins (input-table column, then a sidecar `VIDEO.txt`);
otherwise the configured captioner writes one:
- `template` (offline default): a factual sentence from metadata and measured scores (length,
  shape, motion, brightness, dominant colours); it names no objects;
- `qwen2vl`: Qwen2-VL through `transformers`, loaded from a local folder only, captioning
  `caption.batch_size` clips a call (one model per process backend run, a pool of Ray actors on
  the Ray backend: see `stages.py`).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np

from mugv.config import ConfigError
from mugv.video import resize_short_side, sample_indices
from mugv.video.reader import is_media_path

DEFAULT_PROMPT = (
    "Describe this video in detail: the main objects and people, their appearance, their motion, "
    "the camera motion, and the background."
)


@dataclass
class CaptionConfig:
    captioner: Literal["template", "qwen2vl"] = "template"
    use_existing: bool = True  # take table / sidecar captions when present
    model_path: str = ""  # qwen2vl: local model folder
    prompt: str = DEFAULT_PROMPT
    frames: int = 8  # frames shown to the model
    short_side: int = 224  # their size (a captioning model's; the template reads colours at analysis size)
    max_new_tokens: int = 128
    device: str = "cpu"  # the process backend's model; on Ray a GPU actor uses its GPU
    batch_size: int = 8  # clips per call of a captioning model
    actors: int = 0  # Ray: captioning actors; 0: one per GPU of the cluster, or one on CPU without GPUs

    def validate(self) -> None:
        if self.captioner == "qwen2vl" and not self.model_path:
            raise ConfigError("caption.captioner = 'qwen2vl' needs caption.model_path (a local folder)")
        if self.frames < 1 or self.max_new_tokens < 1:
            raise ConfigError("caption.frames and caption.max_new_tokens must be >= 1")
        if self.batch_size < 1 or self.actors < 0:
            raise ConfigError(f"caption.batch_size = {self.batch_size} must be >= 1 and caption.actors = {self.actors} >= 0")


class Captioner(Protocol):
    def caption_batch(self, clips: list[np.ndarray], contexts: list[dict]) -> list[str]:
        """A caption for each clip's uint8 RGB frames [N, H, W, 3]; its context holds the clip's
        metadata and scores."""
        ...


COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")  # OpenCV hue bands


class TemplateCaptioner:
    def caption_batch(self, clips: list[np.ndarray], contexts: list[dict]) -> list[str]:
        return [self.caption(frames, context) for frames, context in zip(clips, contexts, strict=True)]

    def caption(self, frames: np.ndarray, context: dict) -> str:
        width, height = context["width"], context["height"]
        shape = "landscape" if width > height * 1.1 else "portrait" if height > width * 1.1 else "square"
        motion = context.get("motion")
        pace = (
            "with little motion" if motion is None or motion < 2 else
            "with moderate motion" if motion < 8 else "with fast motion"
        )  # fmt: skip
        # Shares of bright, dark and coloured pixels: every 4th pixel of every 4th row is plenty.
        sample = np.ascontiguousarray(frames[:, ::4, ::4])
        hsv = cv2.cvtColor(sample.reshape(-1, sample.shape[2], 3), cv2.COLOR_RGB2HSV).reshape(-1, 3)
        brightness = float(hsv[:, 2].mean()) / 255
        light = "dark" if brightness < 0.3 else "bright" if brightness > 0.65 else "evenly lit"
        coloured = hsv[(hsv[:, 1] > 80) & (hsv[:, 2] > 50)]
        if len(coloured) < 0.05 * len(hsv):
            palette = "muted, nearly monochrome colours"
        else:
            bands = np.bincount(((coloured[:, 0].astype(int) + 8) % 180) * len(COLOUR_NAMES) // 180, minlength=len(COLOUR_NAMES))
            top = [COLOUR_NAMES[i] for i in np.argsort(bands)[::-1][:2] if bands[i] > 0.15 * len(coloured)]
            palette = "mostly " + " and ".join(top) + " tones" if top else "mixed colours"
        return (
            f"A {context['duration']:.1f}-second {shape} video clip ({width}x{height}, {context['fps']:.0f} fps), "
            f"{light}, {pace}, in {palette}."
        )


class Qwen2VLCaptioner:
    """Qwen2-VL from a local folder (weights, tokenizer and `preprocessor_config.json`).

    The frames go in as a sequence of images and the ChatML prompt is built here: transformers'
    Qwen2-VL video and combined processors need an image library this project cannot install on CPU."""

    def __init__(self, model_path: str, prompt: str, max_new_tokens: int, device: str = "cpu"):
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_path, local_files_only=True)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model_path, local_files_only=True).to(device).eval()
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def caption_batch(self, clips: list[np.ndarray], contexts: list[dict]) -> list[str]:
        """Greedy captions of several clips in one `generate` call: prompts padded on the left
        (so every prompt ends where generation starts) with an attention mask, and the images of
        all clips in prompt order; the same captions as one clip at a time."""
        import torch

        texts, pixels, grids = [], [], []
        merge = self.image_processor.merge_size**2
        for frames in clips:
            vision = self.image_processor(images=list(frames), return_tensors="pt")
            pads = [int(t * h * w) // merge for t, h, w in vision["image_grid_thw"].tolist()]
            images = "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in pads)
            texts.append(
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                f"<|im_start|>user\n{images}{self.prompt}<|im_end|>\n<|im_start|>assistant\n"
            )
            pixels.append(vision["pixel_values"])
            grids.append(vision["image_grid_thw"])
        tokens = self.tokenizer(texts, return_tensors="pt", padding=True)
        with torch.no_grad():
            output = self.model.generate(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
                pixel_values=torch.cat(pixels).to(self.device),
                image_grid_thw=torch.cat(grids).to(self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, tokens["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@lru_cache(maxsize=2)
def make_captioner(captioner: str, model_path: str, prompt: str, max_new_tokens: int, device: str) -> Captioner:
    if captioner == "qwen2vl":
        return Qwen2VLCaptioner(model_path, prompt, max_new_tokens, device)
    return TemplateCaptioner()


def captioner_for(cfg: CaptionConfig, device: str = "") -> Captioner:
    """The configured captioner, loaded once per process (on `device`, else `caption.device`)."""
    return make_captioner(cfg.captioner, cfg.model_path, cfg.prompt, cfg.max_new_tokens, device or cfg.device)


def sidecar_caption(video_path: str) -> str:
    """The text of `VIDEO.txt` beside the video, if there is one."""
    sidecar = Path(video_path).with_suffix(".txt")
    return sidecar.read_text(errors="replace").strip() if sidecar.is_file() else ""


def is_caption_sidecar(path: str) -> bool:
    """Whether `path` is the `VIDEO.txt` of a video beside it (read as that video's caption)."""
    text = Path(path)
    return text.suffix == ".txt" and any(is_media_path(p) for p in text.parent.glob(glob.escape(text.stem) + ".*"))


def caption_without_model(cfg: CaptionConfig, frames: np.ndarray, context: dict) -> tuple[str, str] | None:
    """(caption, where it came from: `input`, `sidecar` or `template`) when no model is needed:
    an existing caption, else the template's (a formula of the frames, made where they are);
    None when the clip waits for the captioning model, shown `model_frames`."""
    if cfg.use_existing and context.get("input_caption"):
        return context["input_caption"], "input"
    if cfg.use_existing and (text := sidecar_caption(context["path"])):
        return text, "sidecar"
    if cfg.captioner == "template":
        picks = frames[sample_indices(0, len(frames), cfg.frames)]
        return TemplateCaptioner().caption(picks, context), "template"
    return None


def model_frames(cfg: CaptionConfig, frames: np.ndarray) -> np.ndarray:
    """The `caption.frames` evenly spaced frames a captioning model is shown, at most
    `caption.short_side` on their shorter side."""
    picks = frames[sample_indices(0, len(frames), cfg.frames)]
    return resize_short_side(picks, cfg.short_side) if min(picks.shape[1:3]) > cfg.short_side else picks
