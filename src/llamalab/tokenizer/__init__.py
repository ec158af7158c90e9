"""Tokenizers: SentencePiece (Llama 2), tiktoken (Llama 3), HF tokenizer.json; chat formats; streaming; training."""
from llamalab.tokenizer.base import Tokenizer
from llamalab.tokenizer.chat import encode_dialog, encode_llama2_dialog, encode_llama3_dialog, render_chat_template
from llamalab.tokenizer.hf import HFTokenizer
from llamalab.tokenizer.load import load_tokenizer
from llamalab.tokenizer.spm import SentencePieceTokenizer
from llamalab.tokenizer.stream import StreamDecoder
from llamalab.tokenizer.tiktoken_bpe import LLAMA3_PATTERN, LLAMA3_SPECIAL_TOKENS, TiktokenTokenizer
from llamalab.tokenizer.train import LLAMA2_OPTIONS, train_sentencepiece

__all__ = [
    "HFTokenizer", "LLAMA2_OPTIONS", "LLAMA3_PATTERN", "LLAMA3_SPECIAL_TOKENS", "SentencePieceTokenizer",
    "StreamDecoder", "TiktokenTokenizer", "Tokenizer", "encode_dialog", "encode_llama2_dialog",
    "encode_llama3_dialog", "load_tokenizer", "render_chat_template", "train_sentencepiece",
]
