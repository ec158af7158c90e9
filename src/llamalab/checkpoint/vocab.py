"""The tokenizer beside a checkpoint: finding it, copying it along, and reading a SentencePiece vocabulary."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import sentencepiece

from llamalab.errors import CheckpointError

# Files that make up a tokenizer, in the order `find_tokenizer` prefers them.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def find_tokenizer(path: str | Path) -> Path | None:
    """The tokenizer file in a checkpoint folder or beside a checkpoint file (tokenizer.model, else tokenizer.json)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    for name in TOKENIZER_FILES[:2]:
        if (folder / name).is_file():
            return folder / name
    return None


def copy_tokenizer_files(tokenizer: str | Path, folder: Path) -> None:
    """Copy a tokenizer (a file, or the tokenizer files of a folder) into a checkpoint folder."""
    tokenizer = Path(tokenizer)
    if not tokenizer.exists():
        raise CheckpointError(f"tokenizer {tokenizer} not found")
    if tokenizer.is_file() and tokenizer.name not in TOKENIZER_FILES:  # e.g. tok512.model: copied under the usual name
        shutil.copyfile(tokenizer, folder / ("tokenizer.json" if tokenizer.suffix == ".json" else "tokenizer.model"))
        return
    source = tokenizer if tokenizer.is_dir() else tokenizer.parent
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


def special_token_ids(tokenizer: str | Path) -> dict[str, int]:
    """{"bos_token_id", "eos_token_id"} of a SentencePiece tokenizer (empty for other kinds)."""
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer))
    except (OSError, RuntimeError):
        return {}
    return {name: i for name, i in (("bos_token_id", sp.bos_id()), ("eos_token_id", sp.eos_id())) if i >= 0}


@dataclass
class SentencePieceVocab:
    """Every piece of a SentencePiece model with its score and llama.cpp token type, and the special ids."""

    pieces: list[str]
    scores: list[float]
    types: list[int]  # llama.cpp's token types: 1 normal, 2 unknown, 3 control, 5 unused, 6 byte
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int  # -1 = none


def sentencepiece_vocab(path: str | Path) -> SentencePieceVocab:
    """Read a SentencePiece `tokenizer.model` with the sentencepiece library."""
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a SentencePiece model ({e}); only SentencePiece vocabularies export here") from None
    n = sp.vocab_size()
    return SentencePieceVocab(
        pieces=[sp.id_to_piece(i) for i in range(n)],
        scores=[sp.get_score(i) for i in range(n)],
        types=[_token_type(sp, i) for i in range(n)],
        bos_id=sp.bos_id(), eos_id=sp.eos_id(), unk_id=sp.unk_id(), pad_id=sp.pad_id(),
    )


def _token_type(sp: sentencepiece.SentencePieceProcessor, i: int) -> int:
    if sp.is_unknown(i):
        return 2
    if sp.is_control(i):
        return 3
    if sp.is_unused(i):
        return 5
    if sp.is_byte(i):
        return 6
    return 1
