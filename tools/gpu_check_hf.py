"""Part 5 of tools/gpu_check.sh: a tiny random Qwen2-MoE checkpoint built from its config class
(no download), saved with save_pretrained into the folder given as the only argument. The
vocabulary of 320 covers the byte alphabet that the built-in byte-level BPE needs."""

from __future__ import annotations

import sys

import torch
import transformers


def main(folder: str) -> None:
    cfg = transformers.Qwen2MoeConfig(
        vocab_size=320, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48,
        intermediate_size=96, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    print(f"saved a tiny Qwen2-MoE (8 experts, top-2) to {folder}")


if __name__ == "__main__":
    main(sys.argv[1])
