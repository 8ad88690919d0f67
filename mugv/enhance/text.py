"""Prompt -> umT5 token states, as the release's WanPrompter does (ENHANCER-SPEC §6): the text
is cleaned (ftfy, HTML entities unescaped twice, whitespace collapsed), tokenised with `</s>`
appended and padded to 512 with a mask, encoded, and only the real rows (tokens + `</s>`) are
kept; the DiT zero-pads them back to 512."""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from mugv.enhance.adapters import EnhancerWeightsError, build_umt5, read_torch_file

TEXT_LEN = 512


def clean_prompt(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5PromptEncoder:
    """umT5 (`transformers.UMT5EncoderModel`) from Wan's `.pth` plus its tokenizer folder."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = TEXT_LEN):
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @classmethod
    def from_files(cls, weights: str | Path, tokenizer_folder: str | Path,
                   dtype: torch.dtype = torch.float32) -> UMT5PromptEncoder:
        return cls(build_umt5(read_torch_file(weights, "umT5 text encoder"), dtype), load_tokenizer(tokenizer_folder))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(1, L) token ids and mask -> (real tokens, D) float32."""
        states = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
        return states[0, : int(mask.sum())].float()

    def encode(self, prompt: str) -> torch.Tensor:
        tokens = self.tokenizer([clean_prompt(prompt)], return_tensors="pt", padding="max_length",
                                truncation=True, max_length=self.max_length, add_special_tokens=True)
        return self.encode_ids(tokens["input_ids"], tokens["attention_mask"])


class EmptyPromptEncoder:
    """Every prompt -> one zero row of `text_dim` states: for an enhancer trained without a prompt
    (`train.objective = "enhancer_flow"` on a pair set, whose batches carry that same zero row)."""

    def __init__(self, text_dim: int):
        self.model, self.text_dim = torch.nn.Identity(), text_dim

    def encode(self, prompt: str) -> torch.Tensor:
        return torch.zeros(1, self.text_dim)


def load_tokenizer(folder: str | Path):
    """The umT5 tokenizer of a local folder (Wan2.1-T2V-1.3B/google/umt5-xxl)."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise EnhancerWeightsError(f"umT5 tokenizer folder not found: {folder}")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise EnhancerWeightsError(f"{folder}: cannot load the umT5 tokenizer ({exc})") from exc
