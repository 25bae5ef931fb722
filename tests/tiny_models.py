"""Tiny random-initialised models of the real architectures, saved with save_pretrained (safetensors).

They load through the same `local:` path as any user folder, so tests exercise the real loading code
without any download. A word-level tokenizer built here covers the scenes captions.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a an the one two three small large red green blue yellow purple orange white black gray beige "
    "circle circles square squares triangle triangles diamond diamonds cross crosses top middle bottom "
    "left right center corner in on at of with and is are there picture background . , ; "
    "cat sat mat hello world"
).split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>"]


def build_tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    if kind == "encoder":  # BERT-like: [CLS] ... [SEP]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        specials = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                        mask_token="[MASK]")
    else:  # causal: a BOS, as Llama/Gemma tokenizers add
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
        specials = dict(pad_token="[PAD]", unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials), len(vocab)


def _config(arch: str, vocab_size: int):
    import transformers as t

    if arch == "llama":
        return t.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                             pad_token_id=0, bos_token_id=5, eos_token_id=6, architectures=["LlamaForCausalLM"])
    if arch == "gemma3":
        return t.Gemma3TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                  max_position_embeddings=64, pad_token_id=0, bos_token_id=5, eos_token_id=6,
                                  architectures=["Gemma3ForCausalLM"])
    if arch == "bert":
        return t.BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, max_position_embeddings=64, pad_token_id=0,
                            architectures=["BertModel"])
    if arch == "mpnet":
        return t.MPNetConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=70, pad_token_id=0,
                             architectures=["MPNetForMaskedLM"])
    raise ValueError(arch)


ARCHS = {"llama": "causal_lm", "gemma3": "causal_lm", "bert": "encoder", "mpnet": "encoder",
         "vit": "vision", "dinov2": "vision", "clip": "vision", "resnet": "vision"}
IMAGE_SIZE = 32


def _vision_model(arch: str):
    import transformers as t

    common = dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4)
    if arch == "vit":
        return t.ViTModel(t.ViTConfig(**common)), t.ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if arch == "dinov2":
        return (t.Dinov2Model(t.Dinov2Config(**common, mlp_ratio=2)),
                t.BitImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}))
    if arch == "clip":  # a whole CLIP checkpoint (text + vision): the loader must take its vision tower
        text, _ = build_tokenizer("causal_lm")
        config = t.CLIPConfig(
            text_config=dict(vocab_size=len(SPECIALS + WORDS), hidden_size=32, intermediate_size=64,
                             num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32),
            vision_config=dict(common), projection_dim=16)
        return t.CLIPModel(config), t.CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    if arch == "resnet":
        config = t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 16], depths=[1, 1], layer_type="basic")
        return t.ResNetModel(config), t.ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    raise ValueError(arch)


def save_tiny_model(arch: str, folder: str | Path, seed: int = 1234) -> Path:
    import transformers as t

    folder = Path(folder)
    kind = ARCHS[arch]
    if kind == "vision":
        torch.manual_seed(seed)
        model, processor = _vision_model(arch)
        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        return folder
    tokenizer, vocab_size = build_tokenizer(kind)
    config = _config(arch, vocab_size)
    torch.manual_seed(seed)
    cls = t.AutoModelForCausalLM if kind == "causal_lm" else t.AutoModel
    model = cls.from_config(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
