"""Random-weight stand-ins for pretrained components, built from transformers configs and saved as a
user's downloads would be (``save_pretrained`` folders, safetensors; no hub access): a SigLIP vision
tower and a Qwen2 causal LM with a byte-level BPE tokenizer shaped like Qwen2's (its vocabulary, then
added special tokens past it, the embedding padded beyond the tokenizer). Tests and
``benchmarks/train_from_components.py`` start training from them."""

from __future__ import annotations

from pathlib import Path

import torch


def perturb_norms_and_biases(model: torch.nn.Module, seed: int) -> None:
    """Random init leaves norms at 1 and biases at 0: move them, so a weight mapped to the wrong
    place shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def save_siglip(directory: Path, image_size: int = 64, patch_size: int = 16, depth: int = 4,
                whole_siglip: bool = False, width: int = 64, heads: int = 4, mlp: int = 128) -> Path:
    from transformers import SiglipConfig, SiglipModel, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(11)
    vision = SiglipVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth,
                                num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    if whole_siglip:
        model = SiglipModel(SiglipConfig(vision_config=vision.to_dict(),
                                         text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                          num_attention_heads=2, vocab_size=100)))
    else:
        model = SiglipVisionModel(vision)
    perturb_norms_and_biases(model, 1)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def save_qwen2(directory: Path, tie: bool = False, rows: int = 512, tokens: int = 480, width: int = 64,
               depth: int = 4, heads: int = 4, kv_heads: int = 2, mlp: int = 128) -> Path:
    """A Qwen2 LM whose embedding has more rows (``rows``) than its tokenizer has tokens (``tokens``
    learned, 3 added), as Qwen2's."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from eov_edge.core.tokenizer import instruction_corpus

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(list(instruction_corpus(300 if tokens < 1000 else 3000)), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    if tokenizer.get_vocab_size() >= rows:
        raise ValueError(f"rows ({rows}) must exceed the tokenizer's {tokenizer.get_vocab_size()} tokens")
    torch.manual_seed(12)
    config = Qwen2Config(vocab_size=rows, hidden_size=width, intermediate_size=mlp, num_hidden_layers=depth,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         tie_word_embeddings=tie, eos_token_id=tokenizer.token_to_id("<|endoftext|>"))
    model = Qwen2ForCausalLM(config)
    perturb_norms_and_biases(model, 2)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    return directory
