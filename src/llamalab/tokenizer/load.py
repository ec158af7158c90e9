"""`load_tokenizer`: a tokenizer file or a model folder → the right Tokenizer, told apart by content."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from llamalab.errors import TokenizerError
from llamalab.tokenizer.base import Tokenizer
from llamalab.tokenizer.chat import read_chat_template
from llamalab.tokenizer.gguf_vocab import load_gguf_tokenizer
from llamalab.tokenizer.hf import HFTokenizer
from llamalab.tokenizer.spm import SentencePieceTokenizer
from llamalab.tokenizer.tiktoken_bpe import TiktokenTokenizer

# Where a model folder keeps its tokenizer, in order of preference (HF folders: tokenizer.json,
# Meta folders: tokenizer.model, HF Llama 3 folders also original/tokenizer.model).
FOLDER_FILES = ("tokenizer.json", "tokenizer.model", "original/tokenizer.model")
TIKTOKEN_LINE = re.compile(rb"[A-Za-z0-9+/]+=* \d+\r?")


def detect_format(path: Path) -> Callable[[Path], Tokenizer]:
    """What reads this file: JSON → HF, base64 rank lines → tiktoken, protobuf → SentencePiece, GGUF → its vocab."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e.strerror}") from None
    if head.startswith(b"GGUF"):
        return load_gguf_tokenizer
    if head.lstrip().startswith(b"{"):
        return HFTokenizer
    if TIKTOKEN_LINE.fullmatch(head.split(b"\n", 1)[0]):
        return TiktokenTokenizer
    if head.startswith(b"\x0a"):  # ModelProto field 1 (the pieces), length-delimited
        return SentencePieceTokenizer
    raise TokenizerError(
        f"{path}: not a tokenizer file (expected a SentencePiece model, a tiktoken BPE file of "
        "base64 ranks, a tokenizer.json or a .gguf model)"
    )


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer file, or the tokenizer of a model folder, with the chat template stored beside it
    (a .gguf model: the vocabulary and chat template in its metadata)."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
        if not found:
            raise TokenizerError(f"{path}: no tokenizer in this folder (looked for {', '.join(FOLDER_FILES)})")
        path = found[0]
    elif not path.exists():
        raise TokenizerError(f"tokenizer {path} does not exist; pass a tokenizer file or a model folder")
    read = detect_format(path)
    tokenizer = read(path)
    if read is not load_gguf_tokenizer:
        tokenizer.chat_template = read_chat_template(path.parent)
    return tokenizer
