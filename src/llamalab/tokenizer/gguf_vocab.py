"""The tokenizer stored in a GGUF file's metadata (llama.cpp's `tokenizer.ggml.*` keys).

Two kinds: "gpt2" (byte-level BPE: tokens spelled in GPT-2's byte alphabet, the merge list, and a
pre-tokenizer named by `tokenizer.ggml.pre`) becomes a `tokenizers` BPE; "llama" (SentencePiece
pieces, scores and types) becomes a SentencePiece ModelProto. Token types, the special ids,
`add_bos_token`, the chat template and the recommended sampling settings come from the same keys.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from llamalab.errors import TokenizerError
from llamalab.files import write_json
from llamalab.tokenizer.gguf_metadata import has_gguf_key, is_gguf, read_gguf_metadata
from llamalab.tokenizer.hf import KNOWN_END_OF_TURN, KNOWN_EOS, HFTokenizer
from llamalab.tokenizer.spm import SentencePieceTokenizer
from llamalab.tokenizer.tiktoken_bpe import LLAMA3_PATTERN

# llama.cpp's token types (the numbering SentencePiece's ModelProto uses too)
UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = range(7)

# llama.cpp's pre-tokenizers (llama-vocab.cpp): regexes applied in turn, each splitting every piece the
# previous one left into its matches and the text between them; then the bytes of each piece are BPE'd.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
DIGITS_THEN_GPT2 = (r"\p{N}", GPT2_PATTERN)  # StarCoder's tokenizer, SmolLM's: every digit on its own
PRE_TOKENIZERS: dict[str, tuple[str, ...]] = {
    "default": (r"[\p{P}\$\+<=>\^~\|]+", GPT2_PATTERN, r"\p{N}+", r"[0-9][0-9][0-9]"),
    "gpt2": (GPT2_PATTERN,),
    "gpt-2": (GPT2_PATTERN,),
    "llama-bpe": (LLAMA3_PATTERN,),  # Llama 3: Meta's tiktoken pattern
    "llama3": (LLAMA3_PATTERN,),
    "llama-v3": (LLAMA3_PATTERN,),
    "smollm": DIGITS_THEN_GPT2,
    "starcoder": DIGITS_THEN_GPT2,
    "refact": DIGITS_THEN_GPT2,
    "codeshell": DIGITS_THEN_GPT2,
}
# the name llama.cpp knows each pre-tokenizer by, when llamalab writes one
CANONICAL_PRE = ("llama-bpe", "smollm", "gpt-2", "default")
# Llama 3's vocabulary is tiktoken's: a piece that is itself a token is taken whole, before any merge.
WHOLE_PIECE_FIRST = {"llama-bpe", "llama3", "llama-v3"}
SAMPLING_KEYS = {"temperature": "general.sampling.temp", "top_p": "general.sampling.top_p",
                 "top_k": "general.sampling.top_k", "min_p": "general.sampling.min_p"}


def has_gguf_vocabulary(path: str | Path) -> bool:
    """Whether the file is a GGUF model that carries its own vocabulary."""
    return Path(path).is_file() and is_gguf(path) and has_gguf_key(path, "tokenizer.ggml.tokens")


def load_gguf_tokenizer(path: str | Path) -> HFTokenizer | SentencePieceTokenizer:
    """The tokenizer a GGUF file carries: a `GGUFBPETokenizer` ("gpt2") or a `GGUFSentencePieceTokenizer` ("llama")."""
    path = Path(path)
    metadata = read_gguf_metadata(path)
    kind = metadata.get("tokenizer.ggml.model")
    if kind is None or "tokenizer.ggml.tokens" not in metadata:
        raise TokenizerError(f"{path}: the GGUF file has no vocabulary (no tokenizer.ggml.model / tokens); "
                             "pass --tokenizer PATH")
    if kind == "gpt2":
        return GGUFBPETokenizer(path, metadata)
    if kind == "llama":
        return GGUFSentencePieceTokenizer(path, metadata)
    raise TokenizerError(f"{path}: GGUF tokenizer model {kind!r}; llamalab reads 'gpt2' (byte-level BPE) and 'llama' "
                         "(SentencePiece)")


class GGUFBPETokenizer(HFTokenizer):
    """A GGUF "gpt2" vocabulary run by `tokenizers`: BPE of the bytes of the pieces llama.cpp's regexes cut."""

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None):
        self.path = Path(path)
        metadata = read_gguf_metadata(self.path) if metadata is None else metadata
        self.pre = metadata.get("tokenizer.ggml.pre") or "default"
        if self.pre not in PRE_TOKENIZERS:
            raise TokenizerError(f"{self.path}: unknown GGUF pre-tokenizer {self.pre!r} (tokenizer.ggml.pre); "
                                 f"llamalab knows {', '.join(sorted(PRE_TOKENIZERS))}")
        tokens, types = _tokens_and_types(metadata, self.path)
        self.model = _bpe(tokens, types, _merges(metadata, self.path), self.pre, self.path)
        _set_specials(self, metadata, tokens, types, default_add_bos=self.pre in WHOLE_PIECE_FIRST)


class GGUFSentencePieceTokenizer(SentencePieceTokenizer):
    """A GGUF "llama" vocabulary run by SentencePiece: the pieces, scores and types as a BPE ModelProto."""

    def __init__(self, path: str | Path, metadata: dict[str, Any] | None = None):
        path = Path(path)
        metadata = read_gguf_metadata(path) if metadata is None else metadata
        tokens, types = _tokens_and_types(metadata, path)
        scores = metadata.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        if len(scores) != len(tokens):
            raise TokenizerError(f"{path}: {len(scores)} scores for {len(tokens)} tokens in the GGUF vocabulary")
        self.model_proto = sentencepiece_model(tokens, scores, types, metadata, path).SerializeToString()
        super().__init__(path, model_proto=self.model_proto)
        _set_specials(self, metadata, tokens, types, default_add_bos=True)  # llama.cpp's default for SentencePiece


def sentencepiece_model(tokens: list[str], scores: list[float], types: list[int], metadata: dict[str, Any],
                        path: Path):
    """A SentencePiece BPE ModelProto of the pieces, with Llama's normalizer (text as written, "▁" for spaces)."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2  # needs protobuf: imported when a file needs it

    proto = spm_pb2.ModelProto()
    for token, score, kind in zip(tokens, scores, types):
        proto.pieces.add(piece=token, score=score, type=kind if kind != UNDEFINED else NORMAL)
    unknown = [i for i, kind in enumerate(types) if kind == UNKNOWN]
    if len(unknown) != 1:
        raise TokenizerError(f"{path}: a SentencePiece vocabulary needs exactly one unknown token, "
                             f"the GGUF file has {len(unknown)}")
    trainer = proto.trainer_spec
    trainer.model_type = spm_pb2.TrainerSpec.BPE
    trainer.byte_fallback = BYTE in types
    trainer.unk_piece = tokens[unknown[0]]
    for field, key in (("bos_piece", "bos"), ("eos_piece", "eos"), ("pad_piece", "padding")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        setattr(trainer, field, tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else "")
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = bool(metadata.get("tokenizer.ggml.remove_extra_whitespaces", False))
    normalizer.escape_whitespaces = True
    return proto


def _tokens_and_types(metadata: dict[str, Any], path: Path) -> tuple[list[str], list[int]]:
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise TokenizerError(f"{path}: {len(types)} token types for {len(tokens)} tokens in the GGUF vocabulary")
    return tokens, types


def _merges(metadata: dict[str, Any], path: Path) -> list[tuple[str, str]]:
    merges = [tuple(m.split(" ")) for m in metadata.get("tokenizer.ggml.merges", [])]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise TokenizerError(f"{path}: GGUF merge {' '.join(bad)!r} is not two tokens separated by one space")
    if not merges:
        raise TokenizerError(f"{path}: the GGUF byte-level BPE vocabulary has no merges (tokenizer.ggml.merges)")
    return merges


def _bpe(tokens: list[str], types: list[int], merges: list[tuple[str, str]], pre: str,
         path: Path) -> tokenizers.Tokenizer:
    """A `tokenizers` BPE: llama.cpp's regexes as isolating splits, then the pieces' bytes in GPT-2's alphabet."""
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    try:
        bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in WHOLE_PIECE_FIRST, fuse_unk=False)
    except Exception as e:  # the library raises a bare Exception for a merge of unknown tokens
        raise TokenizerError(f"{path}: the GGUF merges do not fit the vocabulary ({e})") from None
    model = tokenizers.Tokenizer(bpe)
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    model.decoder = decoders.ByteLevel()
    # control tokens (<|im_end|>) are special; user-defined ones are matched whole in the text but are not special
    model.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, kind in zip(tokens, types) if kind == CONTROL])
    model.add_tokens([AddedToken(t, special=False, normalized=False)
                      for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    return model


def _set_specials(tok, metadata: dict[str, Any], tokens: list[str], types: list[int], default_add_bos: bool) -> None:
    """BOS/EOS/PAD ids, add_bos/add_eos, the stop ids, the chat template and sampling defaults from the GGUF keys."""

    def token_id(key: str) -> int | None:
        value = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return value if isinstance(value, int) and 0 <= value < len(tokens) else None

    tok.bos_id, tok.eos_id, tok.pad_id = token_id("bos"), token_id("eos"), token_id("padding")
    tok.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_add_bos)) and tok.bos_id is not None
    tok.add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False)) and tok.eos_id is not None
    # end of generation, as llama.cpp gathers it: EOS, EOT, EOM, and control tokens with a known end-of-turn name
    named = {i for i, (t, kind) in enumerate(zip(tokens, types))
             if kind == CONTROL and t in KNOWN_EOS + KNOWN_END_OF_TURN}
    tok.stop_ids = frozenset(({tok.eos_id, token_id("eot"), token_id("eom")} | named) - {None})
    template = metadata.get("tokenizer.chat_template")
    tok.chat_template = template if isinstance(template, str) else None
    tok.sampling_defaults = {name: metadata[key] for name, key in SAMPLING_KEYS.items() if key in metadata}


def pre_tokenizer_name(spec: dict | None) -> str | None:
    """llama.cpp's name for a tokenizer.json's byte-level pre-tokenizer (None when llama.cpp has no such one)."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec or {}]
    if not steps or steps[-1].get("type") != "ByteLevel":
        return None
    regexes = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            regexes.append(step.get("pattern", {}).get("Regex"))
        elif kind == "Digits" and step.get("individual_digits"):
            regexes.append(r"\p{N}")
        elif kind == "ByteLevel" and step is steps[-1]:
            if step.get("use_regex", True):
                regexes.append(GPT2_PATTERN)  # tokenizers' GPT-2 split (its final `|\s+` keeps what llama.cpp keeps)
        else:
            return None
    return next((name for name in CANONICAL_PRE if PRE_TOKENIZERS[name] == tuple(regexes)), None)


def write_tokenizer_files(tokenizer: GGUFBPETokenizer | GGUFSentencePieceTokenizer, folder: Path) -> None:
    """A GGUF's tokenizer as the files of a model folder: tokenizer.json (BPE) or tokenizer.model (SentencePiece),
    and tokenizer_config.json with the special tokens, add_bos_token / add_eos_token and the chat template."""
    if isinstance(tokenizer, GGUFSentencePieceTokenizer):
        (folder / "tokenizer.model").write_bytes(tokenizer.model_proto)
        config = {"tokenizer_class": "LlamaTokenizer"}
    else:
        _with_bos_eos(tokenizer).save(str(folder / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_id")
        if token_id is not None:
            config[f"{name}_token"] = tokenizer.id_to_piece(token_id)
    config.update(add_bos_token=tokenizer.add_bos, add_eos_token=tokenizer.add_eos)
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    write_json(folder / "tokenizer_config.json", config)


def _with_bos_eos(tokenizer: GGUFBPETokenizer) -> tokenizers.Tokenizer:
    """A copy of the BPE whose post-processor adds BOS / EOS as add_bos / add_eos say (how tokenizer.json says it)."""
    model = tokenizers.Tokenizer.from_str(tokenizer.model.to_str())
    ends = [(getattr(tokenizer, f"{name}_id"), getattr(tokenizer, f"add_{name}")) for name in ("bos", "eos")]
    (bos, add_bos), (eos, add_eos) = ends
    if add_bos or add_eos:
        first = [tokenizer.id_to_piece(bos)] if add_bos else []
        last = [tokenizer.id_to_piece(eos)] if add_eos else []
        model.post_processor = processors.TemplateProcessing(
            single=" ".join([*first, "$A", *last]), pair=" ".join([*first, "$A", *last, *first, "$B", *last]),
            special_tokens=[(tokenizer.id_to_piece(i), i) for i, add in ends if add])
    return model
