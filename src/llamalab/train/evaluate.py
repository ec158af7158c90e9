"""Perplexity of a model on text, every token scored once by a sliding window (the standard strided evaluation).

A window holds `context` tokens; consecutive windows start `stride` tokens apart. The first window scores all of
its tokens (but the first, which has nothing to be predicted from); each later one scores only the tokens the
previous windows did not reach, each seeing at least `context - stride` tokens of left context (with
stride = context the windows are disjoint and each window's first token goes unscored, as in transformers' recipe).
The result sums the nats of all scored tokens, so it does not depend on how the windows are cut up into batches.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llamalab.data.shards import documents, input_files
from llamalab.errors import ConfigError, DataError
from llamalab.model import Transformer
from llamalab.model.head_loss import IGNORE_INDEX
from llamalab.tokenizer import Tokenizer, load_tokenizer
from llamalab.train.batches import TokenData


@dataclass(frozen=True)
class EvalText:
    """Token ids to score and the size of the text they encode (UTF-8 bytes), for bits per byte."""

    ids: np.ndarray  # (n_tokens,) int64
    n_bytes: int
    documents: int


@dataclass(frozen=True)
class Perplexity:
    """Summed nats over the scored tokens, and what follows from them."""

    nats: float
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the text (0: unknown)
    seconds: float
    context: int
    stride: int

    @property
    def nats_per_token(self) -> float:
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_token)

    @property
    def bits_per_byte(self) -> float | None:
        return self.nats / math.log(2) / self.bytes if self.bytes else None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"nats_per_token": self.nats_per_token, "perplexity": self.perplexity,
                "bits_per_byte": self.bits_per_byte, "tokens": self.tokens, "bytes": self.bytes,
                "nats": self.nats, "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "context": self.context, "stride": self.stride}


# -- the text to score ---------------------------------------------------------------------------------
def read_eval_text(source: str | Path, tokenizer: Tokenizer | None, split: str = "val",
                   max_tokens: int | None = None) -> EvalText:
    """The token ids of a text file, a .jsonl file ("text" fields), a folder of them, or a `data prepare` folder.

    Text is encoded with BOS first when the tokenizer's model expects one; documents are separated by EOS.
    Prepared folders give the ids of `split` as they were tokenized, their bytes measured by decoding them.
    """
    path = Path(source)
    if path.is_dir() and (path / "meta.json").is_file():
        return _prepared_tokens(path, split, max_tokens)
    texts = [text for text in documents(input_files([path])) if text.strip()]
    if not texts:
        raise DataError(f"{path} holds no text to evaluate")
    if tokenizer is None:
        raise ConfigError(f"evaluating the text of {path} needs a tokenizer and none was found beside the model; "
                          "pass --tokenizer PATH")
    bos = adds_bos(tokenizer)
    ids: list[int] = []
    starts = []  # where each document's ids begin
    for text in texts:
        if ids and tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        starts.append(len(ids))
        ids += tokenizer.encode(text, bos=bos, eos=False)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    return _truncated(np.asarray(ids, dtype=np.int64), n_bytes, np.asarray(starts), tokenizer, max_tokens)


def adds_bos(tokenizer: Tokenizer) -> bool:
    """Whether text for this tokenizer's model starts with BOS (`add_bos_token`; SmolLM2's is false)."""
    return tokenizer.bos_id is not None and tokenizer.add_bos


def _prepared_tokens(folder: Path, split: str, max_tokens: int | None) -> EvalText:
    data = TokenData(folder)
    tokens = data.tokens(split)
    if len(tokens) == 0:
        raise DataError(f"the {split} split of {folder} holds no tokens")
    tokenizer = load_tokenizer(data.tokenizer_path)
    ids = tokens[:].astype(np.int64)
    bos = data.meta.get("bos_id")
    starts = np.flatnonzero(ids == bos) if bos is not None else np.array([0])  # prepare writes BOS ids EOS
    if not len(starts) or starts[0] != 0:  # a split that begins inside a document
        starts = np.concatenate([[0], starts])
    return _truncated(ids, None, starts, tokenizer, max_tokens)


def _truncated(ids: np.ndarray, n_bytes: int | None, starts: np.ndarray, tokenizer: Tokenizer,
               max_tokens: int | None) -> EvalText:
    """The first max_tokens ids (all when None) and the documents they reach into; their bytes measured by
    decoding them when unknown or cut."""
    if max_tokens is not None:
        if max_tokens < 2:
            raise ConfigError(f"--max-tokens must be at least 2, got {max_tokens}")
        if max_tokens < len(ids):
            ids, n_bytes = ids[:max_tokens], None
    if n_bytes is None:
        n_bytes = decoded_bytes(ids, tokenizer)
    return EvalText(ids, n_bytes, int((starts < len(ids)).sum()))


def decoded_bytes(ids: np.ndarray, tokenizer: Tokenizer) -> int:
    """UTF-8 bytes of the text of the ids, decoded document by document (split at BOS / EOS), so that a
    SentencePiece tokenizer's word-start marker does not add a space where a document starts."""
    separators = [i for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None]
    cuts = np.flatnonzero(np.isin(ids, separators)) if separators else np.array([], dtype=np.int64)
    return sum(len(tokenizer.decode(piece.tolist()).encode("utf-8")) for piece in np.split(ids, cuts) if len(piece))


# -- scoring -----------------------------------------------------------------------------------------------
def sliding_windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored) of each window over n_tokens ids: tokens[begin:end] go in, the tokens at
    first scored..end-1 are scored, each from the tokens before it in the window."""
    spans, scored_until = [], 1  # token 0 has no left context
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        first = max(scored_until, begin + 1)
        if first < end:  # a lone last token after disjoint windows has nothing to be scored from
            spans.append((begin, end, first))
        scored_until = end
        if end == n_tokens:
            break
    return spans


def check_windows(model: Transformer, context: int, stride: int, batch_size: int = 1) -> None:
    """A clear error for windows the model cannot take."""
    if context < 2:
        raise ConfigError(f"--context must be at least 2 tokens, got {context}")
    if context > model.args.max_seq_len:
        raise ConfigError(f"--context {context} exceeds the model's max_seq_len={model.args.max_seq_len}; "
                          f"use --context {model.args.max_seq_len} or less")
    if not 1 <= stride <= context:
        raise ConfigError(f"--stride must be between 1 and --context ({context}), got {stride}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")


def evaluate_text(model: Transformer, tokenizer: Tokenizer | None, source: str | Path, context: int | None = None,
                  stride: int | None = None, batch_size: int = 1, split: str = "val", max_tokens: int | None = None,
                  progress: bool = False) -> tuple[Perplexity, EvalText]:
    """`llamalab eval` in one call: the perplexity on a text or .jsonl file, a folder of them, or a prepared folder's
    `split` (see `read_eval_text`), and the text scored; the windows are checked before the text is read."""
    context = model.args.max_seq_len if context is None else context
    stride = max(context // 2, 1) if stride is None else stride
    check_windows(model, context, stride, batch_size)
    text = read_eval_text(source, tokenizer, split, max_tokens)
    return perplexity(model, text.ids, context, stride, text.n_bytes, batch_size, progress), text


@torch.inference_mode()
def perplexity(model: Transformer, ids: np.ndarray | torch.Tensor, context: int | None = None,
               stride: int | None = None, n_bytes: int = 0, batch_size: int = 1,
               progress: bool = False) -> Perplexity:
    """Perplexity of `model` on the ids by sliding windows of `context` tokens (default: the model's max_seq_len)
    `stride` apart (default: context // 2), `batch_size` windows per forward pass."""
    context = model.args.max_seq_len if context is None else context
    stride = max(context // 2, 1) if stride is None else stride
    check_windows(model, context, stride, batch_size)
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long).flatten()
    if len(ids) < 2:
        raise DataError(f"perplexity needs at least 2 tokens, the text has {len(ids)}")
    if int(ids.max()) >= model.args.vocab_size:
        raise DataError(f"token id {int(ids.max())} is outside the model's vocabulary of {model.args.vocab_size}; "
                        "the text was tokenized for another model")
    device = model.device
    spans = sliding_windows(len(ids), context, stride)
    nats, scored = 0.0, 0
    start = time.perf_counter()
    with tqdm(total=len(ids) - 1, unit="tok", desc="evaluating", disable=not progress) as bar:
        for batch in _same_length_batches(spans, batch_size):
            inputs, targets = _window_batch(ids, batch)
            count = int((targets != IGNORE_INDEX).sum())
            mean = model(inputs.to(device), targets=targets.to(device))  # mean nats over the scored targets
            nats += float(mean.double()) * count
            scored += count
            bar.update(count)
    seconds = time.perf_counter() - start
    return Perplexity(nats, scored, n_bytes, seconds, context, stride)


def _same_length_batches(spans: list[tuple[int, int, int]], batch_size: int):
    """Consecutive windows of equal length, at most batch_size at a time."""
    batch: list[tuple[int, int, int]] = []
    for span in spans:
        if batch and (len(batch) == batch_size or span[1] - span[0] != batch[0][1] - batch[0][0]):
            yield batch
            batch = []
        batch.append(span)
    if batch:
        yield batch


def _window_batch(ids: torch.Tensor, batch: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets (len(batch), window - 1), the targets already scored set to IGNORE_INDEX."""
    rows = torch.stack([ids[begin:end] for begin, end, _ in batch])  # (batch, window)
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()
    for row, (begin, _, first) in enumerate(batch):
        targets[row, : first - begin - 1] = IGNORE_INDEX  # target j is token begin + 1 + j
    return inputs, targets
