"""Tokenizers: SentencePiece (Llama 2), tiktoken (Llama 3), HF tokenizer.json; chat templates; training."""
from llamalab.tokenizer.base import Tokenizer
from llamalab.tokenizer.spm import SentencePieceTokenizer
from llamalab.tokenizer.train import LLAMA2_OPTIONS, train_sentencepiece

__all__ = ["LLAMA2_OPTIONS", "SentencePieceTokenizer", "Tokenizer", "train_sentencepiece"]
