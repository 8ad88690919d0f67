"""Stage: captions. An existing caption wins (input-table column, then a sidecar `VIDEO.txt`);
otherwise the configured captioner writes one:
- `template` (offline default): a factual sentence from metadata and measured scores (length,
  shape, motion, brightness, dominant colours); it names no objects;
- `qwen2vl`: Qwen2-VL through `transformers`, loaded from a local folder only.
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
    device: str = "cpu"

    def validate(self) -> None:
        if self.captioner == "qwen2vl" and not self.model_path:
            raise ConfigError("caption.captioner = 'qwen2vl' needs caption.model_path (a local folder)")
        if self.frames < 1 or self.max_new_tokens < 1:
            raise ConfigError("caption.frames and caption.max_new_tokens must be >= 1")


class Captioner(Protocol):
    def caption(self, frames: np.ndarray, context: dict) -> str:
        """A caption for uint8 RGB frames [N, H, W, 3]; `context` holds the clip's metadata and scores."""
        ...


COLOUR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")  # OpenCV hue bands


class TemplateCaptioner:
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
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_path, local_files_only=True)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model_path, local_files_only=True).to(device).eval()
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens

    def caption(self, frames: np.ndarray, context: dict) -> str:
        import torch

        vision = self.image_processor(images=list(frames), return_tensors="pt")
        merge = self.image_processor.merge_size**2
        pads = [int(t * h * w) // merge for t, h, w in vision["image_grid_thw"].tolist()]
        images = "".join(f"<|vision_start|>{'<|image_pad|>' * n}<|vision_end|>" for n in pads)
        text = (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            f"<|im_start|>user\n{images}{self.prompt}<|im_end|>\n<|im_start|>assistant\n"
        )
        tokens = self.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            output = self.model.generate(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
                pixel_values=vision["pixel_values"].to(self.device),
                image_grid_thw=vision["image_grid_thw"].to(self.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
            )
        new_tokens = output[0, tokens["input_ids"].shape[1] :]
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


@lru_cache(maxsize=2)
def make_captioner(captioner: str, model_path: str, prompt: str, max_new_tokens: int, device: str) -> Captioner:
    if captioner == "qwen2vl":
        return Qwen2VLCaptioner(model_path, prompt, max_new_tokens, device)
    return TemplateCaptioner()


def sidecar_caption(video_path: str) -> str:
    """The text of `VIDEO.txt` beside the video, if there is one."""
    sidecar = Path(video_path).with_suffix(".txt")
    return sidecar.read_text(errors="replace").strip() if sidecar.is_file() else ""


def is_caption_sidecar(path: str) -> bool:
    """Whether `path` is the `VIDEO.txt` of a video beside it (read as that video's caption)."""
    text = Path(path)
    return text.suffix == ".txt" and any(is_media_path(p) for p in text.parent.glob(glob.escape(text.stem) + ".*"))


def caption_clip(cfg: CaptionConfig, frames: np.ndarray, context: dict, existing: str = "") -> tuple[str, str]:
    """(caption, where it came from: `input`, `sidecar`, or the captioner's name)."""
    if cfg.use_existing and existing:
        return existing, "input"
    if cfg.use_existing and (text := sidecar_caption(context["path"])):
        return text, "sidecar"
    picks = frames[sample_indices(0, len(frames), cfg.frames)]
    if cfg.captioner != "template" and min(picks.shape[1:3]) > cfg.short_side:
        picks = resize_short_side(picks, cfg.short_side)
    captioner = make_captioner(cfg.captioner, cfg.model_path, cfg.prompt, cfg.max_new_tokens, cfg.device)
    return captioner.caption(picks, context), cfg.captioner
