"""A tiny random-weight T5 (or umT5) encoder and a word-level tokenizer, written to a folder
offline: the `t5` text encoder's code path (T5EncoderModel or UMT5EncoderModel + tokenizer from a
local folder) for tests and demos."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "a an the of in on at to with and is are cat dog person man woman car street city sky sea beach "
    "tree forest river mountain red blue green white black walks runs jumps flies drives video clip "
    "camera slowly fast moving scene aesthetic score 6.0 . , : 0 1 2 3 4 5 6 7 8 9"
).split()


def make_tiny_t5(folder: str | Path, d_model: int = 32, layers: int = 2, heads: int = 4, seed: int = 0,
                 family: str = "t5") -> Path:
    """Write a T5 (`family` "t5") or umT5 ("umt5") encoder config + random weights and a tokenizer
    to `folder`; returns it."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(str(folder))
    config_cls, model_cls = {"t5": (T5Config, T5EncoderModel), "umt5": (UMT5Config, UMT5EncoderModel)}[family]
    config = config_cls(vocab_size=len(vocab), d_model=d_model, d_kv=d_model // heads, d_ff=2 * d_model,
                        num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                        use_cache=False, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model_cls(config).save_pretrained(str(folder))
    return folder
