"""Train a Llama-2-style SentencePiece BPE tokenizer on the user's text."""
from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece

from llamalab.errors import TokenizerError
from llamalab.files import atomic_output

# The options of Llama 2's tokenizer.model: BPE with byte fallback (no unknown characters), digits
# split one per token, text kept as written (identity normalisation, whitespace preserved),
# <unk>=0, <s>=1, </s>=2 and no padding token.
LLAMA2_OPTIONS = dict(
    byte_fallback=True,
    split_digits=True,
    allow_whitespace_only_pieces=True,
    remove_extra_whitespaces=False,
    normalization_rule_name="identity",
    character_coverage=0.99995,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
)


def train_sentencepiece(
    inputs: Iterable[str | Path] | Iterable[str],
    vocab_size: int,
    out_path: str | Path,
    model_type: str = "bpe",
    **options,
) -> Path:
    """Train on text files (paths) or an iterable of texts; write the model atomically to out_path.

    Extra keyword `options` override the SentencePiece trainer options of `LLAMA2_OPTIONS`.
    """
    out_path = Path(out_path)
    lines = _lines(inputs)
    first = next(lines, None)
    if first is None:
        raise TokenizerError("no training text: the inputs are empty")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], lines),
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,  # no progress log on stderr
            **{**LLAMA2_OPTIONS, **options},
        )
    except RuntimeError as e:
        reason = str(e).rsplit("] ", 1)[-1]  # drop SentencePiece's "INTERNAL: file.cc(line) [check]" prefix
        raise TokenizerError(f"SentencePiece training failed: {reason}") from None
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(model.getvalue())
    return out_path


def _lines(inputs: Iterable[str | Path]) -> Iterator[str]:
    """Non-empty lines of the inputs: a Path or an existing file name is read, any other str is text."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    for item in inputs:
        if isinstance(item, Path) or (isinstance(item, str) and "\n" not in item and os.path.isfile(item)):
            path = Path(item)
            try:
                with path.open(encoding="utf-8") as f:
                    yield from (line.rstrip("\n") for line in f if line.strip())
            except (OSError, UnicodeDecodeError) as e:
                raise TokenizerError(f"cannot read training text {path}: {e}") from None
        else:
            yield from (line for line in item.splitlines() if line.strip())
