"""Text encoder folders load as the architecture they hold, with the packages their tokenizer needs."""

import io
import sys

import pytest
import torch

from mugv.models.text import build_text_encoder
from mugv.models.text.encoders import TextEncoderError
from mugv.models.text.tiny import WORDS, make_tiny_t5

from numerics_testing import scale_relative_error

PROMPTS = ["a red car drives through the city", "dog"]


def reference_states(model_cls, folder) -> torch.Tensor:
    from transformers import AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)(PROMPTS, padding="longest",
                                                                               return_tensors="pt")
    model = model_cls.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        states = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
    return states * tokens["attention_mask"][..., None]


def test_umt5_loads_with_every_layers_position_bias(tmp_path):
    from transformers import T5EncoderModel, UMT5EncoderModel

    folder = make_tiny_t5(tmp_path / "umt5", family="umt5")
    encoder = build_text_encoder("t5", str(folder))
    assert isinstance(encoder.model, UMT5EncoderModel)
    ours = encoder.encode(PROMPTS).states
    assert torch.equal(ours, reference_states(UMT5EncoderModel, folder))  # the same model, computed the same way
    # What T5EncoderModel makes of the folder: layer 0's bias reused by every layer, the others dropped.
    assert scale_relative_error(reference_states(T5EncoderModel, folder), ours) > 1e-3


def sentencepiece_only_t5(folder):
    """A tiny T5 whose tokenizer is only `spiece.model`, as Google ships T5 v1.1 (no tokenizer.json)."""
    import sentencepiece
    from transformers import T5Config, T5EncoderModel

    sentences = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=model, vocab_size=60,
                                             model_type="word", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                             minloglevel=2)
    folder.mkdir()
    (folder / "spiece.model").write_bytes(model.getvalue())
    config = T5Config(vocab_size=60, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                      feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, pad_token_id=0,
                      eos_token_id=1)
    T5EncoderModel(config).save_pretrained(str(folder))
    return folder


def test_a_sentencepiece_only_tokenizer_loads_or_names_the_missing_package(tmp_path, monkeypatch):
    folder = sentencepiece_only_t5(tmp_path / "t5")
    out = build_text_encoder("t5", str(folder)).encode(PROMPTS)
    assert out.mask.sum(1).tolist() == [8, 2]  # 7 words + </s>; "dog" + </s>
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if it were not installed
    with pytest.raises(TextEncoderError, match=rf"{folder}: .*spiece.model.* `sentencepiece` package"):
        build_text_encoder("t5", str(folder))
