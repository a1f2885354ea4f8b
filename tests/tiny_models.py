"""Tiny random transformers models saved with save_pretrained, the reference for parity."""

import numpy as np
import torch
import transformers

VOCAB = 128


def qwen3_config(**overrides) -> transformers.Qwen3Config:
    kw = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
        max_position_embeddings=256, eos_token_id=1, bos_token_id=0,
    )  # fmt: skip
    return transformers.Qwen3Config(**{**kw, **overrides})


def qwen2_config(**overrides) -> transformers.Qwen2Config:
    kw = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
        max_position_embeddings=256, eos_token_id=1, bos_token_id=0,
    )  # fmt: skip
    return transformers.Qwen2Config(**{**kw, **overrides})


def random_hf_model(config, seed: int = 0):
    """A transformers model whose every weight (norms and biases too) is random."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf(config, directory, seed: int = 0) -> str:
    random_hf_model(config, seed).save_pretrained(directory)
    return str(directory)


def load_hf(directory):
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def left_padded_batch(seed: int = 0, batch: int = 3, length: int = 12, pads=(0, 5, 9)):
    """Token ids, attention mask and positions of a left-padded batch of different lengths."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(2, VOCAB, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    for row, pad in enumerate(pads[:batch]):
        mask[row, :pad] = 0
        ids[row, :pad] = 0
    positions = np.maximum(mask.cumsum(-1) - 1, 0).astype(np.int32)
    return ids, mask, positions


def hf_logits(model, ids, mask, positions) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()
