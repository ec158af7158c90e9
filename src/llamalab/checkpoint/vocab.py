"""The tokenizer beside a checkpoint: finding it, copying it along, and its vocabulary as GGUF stores it.

GGUF knows two tokenizer models: "llama" (SentencePiece pieces with scores) and "gpt2" (byte-level BPE:
each token's bytes spelled with GPT-2's printable stand-ins, plus the merge list). Llama 2 tokenizers
are the first; Llama 3 (tiktoken ranks or a byte-level tokenizer.json) the second.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llamalab.checkpoint.hub import resolve_model
from llamalab.errors import CheckpointError, LlamalabError
from llamalab.files import read_json
from llamalab.tokenizer import HFTokenizer, SentencePieceTokenizer, TiktokenTokenizer, Tokenizer, load_tokenizer
from llamalab.tokenizer.gguf_metadata import read_gguf_metadata
from llamalab.tokenizer.gguf_vocab import (
    GGUFBPETokenizer,
    GGUFSentencePieceTokenizer,
    has_gguf_vocabulary,
    pre_tokenizer_name,
    write_tokenizer_files,
)
from llamalab.tokenizer.hf import KNOWN_END_OF_TURN
from llamalab.tokenizer.tiktoken_bpe import read_bpe_ranks

# Files that make up a tokenizer; the first two are what `find_tokenizer` looks for, in this order.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def find_tokenizer(path: str | Path) -> Path | None:
    """The tokenizer of a checkpoint: a .gguf file's own vocabulary, else the tokenizer file in the checkpoint
    folder or beside the checkpoint file (tokenizer.model, else tokenizer.json)."""
    path = resolve_model(path)
    if has_gguf_vocabulary(path):
        return path
    folder = path if path.is_dir() else path.parent
    for name in TOKENIZER_FILES[:2]:
        if (folder / name).is_file():
            return folder / name
    return None


def copy_tokenizer_files(tokenizer: Path, folder: Path) -> None:
    """Copy a tokenizer file, and the other tokenizer files beside it, into a checkpoint folder (a .gguf model's
    vocabulary: written out as tokenizer.json or tokenizer.model, with its tokenizer_config.json)."""
    if has_gguf_vocabulary(tokenizer):
        write_tokenizer_files(open_tokenizer(tokenizer), folder)
        return
    if tokenizer.name not in TOKENIZER_FILES:  # e.g. tok512.model: copied under the usual name
        shutil.copyfile(tokenizer, folder / ("tokenizer.json" if tokenizer.suffix == ".json" else "tokenizer.model"))
        return
    for name in TOKENIZER_FILES:
        if (tokenizer.parent / name).is_file():
            shutil.copyfile(tokenizer.parent / name, folder / name)


def open_tokenizer(path: Path) -> Tokenizer:
    """llamalab.tokenizer's reading of the file, its errors re-raised as this checkpoint's."""
    try:
        return load_tokenizer(path)
    except LlamalabError as e:
        raise CheckpointError(f"tokenizer to ship with the checkpoint: {e}") from None


def special_token_ids(tokenizer: Path) -> dict[str, int | list[int]]:
    """config.json / generation_config.json fields: bos_token_id, and eos_token_id (every stop id when several)."""
    tok = open_tokenizer(tokenizer)
    ids = {"bos_token_id": tok.bos_id, "eos_token_id": sorted(tok.stop_ids) if len(tok.stop_ids) > 1 else tok.eos_id}
    return {k: v for k, v in ids.items() if v is not None}


@dataclass
class Vocabulary:
    """A vocabulary as GGUF's tokenizer.ggml.* keys hold it."""

    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]
    scores: list[float] = field(default_factory=list)  # "llama" only
    merges: list[str] = field(default_factory=list)  # "gpt2" only: "left right" in merge order
    pre: str = "default"  # "gpt2" only: llama.cpp's name of the pre-tokenizer
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None  # end of a chat turn, when it is not EOS (Llama 3's <|eot_id|>)
    add_bos: bool = True
    add_eos: bool = False
    chat_template: str | None = None


def vocabulary(path: Path) -> Vocabulary:
    """The GGUF vocabulary of a SentencePiece model, a tiktoken file, a byte-level BPE tokenizer.json or a .gguf."""
    tok = open_tokenizer(path)
    if isinstance(tok, (GGUFBPETokenizer, GGUFSentencePieceTokenizer)):
        vocab = _gguf(path)
    elif isinstance(tok, SentencePieceTokenizer):
        vocab = _sentencepiece(tok)
    elif isinstance(tok, TiktokenTokenizer):
        vocab = _tiktoken(tok)
    elif isinstance(tok, HFTokenizer) and _is_byte_level_bpe(tok.path):
        vocab = _byte_level_json(tok)
    else:
        raise CheckpointError(f"{path}: only SentencePiece and byte-level BPE vocabularies go into GGUF; "
                              "pass the SentencePiece tokenizer.model instead")
    vocab.bos_id, vocab.eos_id, vocab.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
    vocab.add_bos, vocab.add_eos, vocab.chat_template = tok.add_bos, tok.add_eos, tok.chat_template
    if vocab.eot_id is None:
        vocab.eot_id = next((tok.special_tokens[t] for t in KNOWN_END_OF_TURN
                             if tok.special_tokens.get(t, tok.eos_id) != tok.eos_id), None)
    return vocab


def _gguf(path: Path) -> Vocabulary:
    """The tokenizer.ggml.* keys of a GGUF file as they are."""
    meta = {key.removeprefix("tokenizer.ggml."): value for key, value in read_gguf_metadata(path).items()
            if key.startswith("tokenizer.ggml.")}
    tokens = meta["tokens"]
    return Vocabulary(meta["model"], tokens=tokens, types=meta.get("token_type") or [NORMAL] * len(tokens),
                      scores=meta.get("scores", []), merges=meta.get("merges", []), pre=meta.get("pre") or "default",
                      unk_id=meta.get("unknown_token_id"), eot_id=meta.get("eot_token_id"))


def _sentencepiece(tok: SentencePieceTokenizer) -> Vocabulary:
    sp = tok.model
    n = sp.vocab_size()

    def token_type(i: int) -> int:
        checks = ((sp.is_unknown, UNKNOWN), (sp.is_control, CONTROL), (sp.is_unused, UNUSED), (sp.is_byte, BYTE))
        for test, kind in checks:
            if test(i):
                return kind
        return NORMAL

    return Vocabulary("llama", tokens=[sp.id_to_piece(i) for i in range(n)], types=[token_type(i) for i in range(n)],
                      scores=[sp.get_score(i) for i in range(n)], unk_id=sp.unk_id())


def _tiktoken(tok: TiktokenTokenizer) -> Vocabulary:
    ranks = read_bpe_ranks(tok.path)
    by_rank = sorted(ranks, key=ranks.get)
    specials = sorted(tok.special_tokens.items(), key=lambda item: item[1])
    return Vocabulary(
        "gpt2",
        pre="llama-bpe",
        tokens=[byte_level(t) for t in by_rank] + [name for name, _ in specials],
        types=[NORMAL] * len(by_rank) + [CONTROL] * len(specials),
        merges=[f"{byte_level(a)} {byte_level(b)}" for a, b in bpe_merges(ranks)],
    )


def _byte_level_json(tok: HFTokenizer) -> Vocabulary:
    spec = read_json(tok.path, CheckpointError)
    tokens = {i: t for t, i in spec["model"]["vocab"].items()}
    types = dict.fromkeys(tokens, NORMAL)
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    size = max(tokens) + 1
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise CheckpointError(f"{tok.path}: its pre-tokenizer is none that GGUF names (llama.cpp knows Llama 3's "
                              "split, GPT-2's and digits-then-GPT-2); the GGUF file would tokenize differently")
    return Vocabulary(
        "gpt2",
        pre=pre,
        tokens=[tokens.get(i, f"[PAD{i}]") for i in range(size)],  # llama.cpp's filler for unused ids
        types=[types.get(i, UNUSED) for i in range(size)],
        merges=[m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]],
    )


def _is_byte_level_bpe(path: Path) -> bool:
    spec = read_json(path, CheckpointError)
    return spec.get("model", {}).get("type") == "BPE" and "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))


def byte_level(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-level alphabet (each byte a printable character), as tokenizer.json has it."""
    return "".join(_BYTE_TO_CHAR[b] for b in token)


def _byte_alphabet() -> list[str]:
    """GPT-2's stand-ins: printable Latin-1 bytes are themselves, the 68 others map to chr(256), chr(257), ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(others)) for b in range(256)]


_BYTE_TO_CHAR = _byte_alphabet()


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that made each multi-byte token, in rank order: BPE of its bytes with lower ranks ends in two parts."""
    merges = []
    for token in sorted((t for t in ranks if len(t) > 1), key=ranks.get):
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            pair_ranks = [ranks.get(a + b, len(ranks)) for a, b in zip(parts, parts[1:])]
            i = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
            if pair_ranks[i] >= ranks[token]:
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges
