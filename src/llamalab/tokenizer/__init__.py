"""Tokenizers: SentencePiece (Llama 2), tiktoken (Llama 3), HF tokenizer.json; chat templates."""
