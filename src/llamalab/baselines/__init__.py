"""Baselines: the original encoder–decoder Transformer, GPT-to-LLaMA ablation variants and the ablation runner."""
