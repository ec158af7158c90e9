"""Token data: text files, folders and .jsonl → memory-mapped token shards, and the batches drawn from them.

`prepare` writes, into one folder, `train_NNN.bin` / `val_NNN.bin` shards of raw uint16 (uint32 when
the vocabulary needs it) token ids, each document as BOS ids EOS, the tokenizer file, and `meta.json`
(written last, so a folder with a meta.json is complete). `TokenData` maps them back without reading
them into memory; `Batches` cuts the train tokens into windows and deals them out, shuffled per epoch,
from a position that a checkpoint saves and restores.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from llamalab.files import atomic_output
from llamalab.errors import DataError
from llamalab.tokenizer import load_tokenizer, train_sentencepiece

FORMAT = "llamalab-tokens"
VERSION = 1
TEXT_SUFFIXES = (".txt", ".md", ".jsonl")
SHARD_TOKENS = 2**28  # tokens per shard file (512 MiB of uint16)


# -- reading the inputs ------------------------------------------------------------------------------
def input_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The text files named, and those found (sorted) in the folders named."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"input {item} does not exist; pass text files, .jsonl files or folders of them")
    if not files:
        raise DataError(f"no {'/'.join(TEXT_SUFFIXES)} files in {', '.join(map(str, inputs))}; nothing to tokenize")
    return files


def documents(files: Iterable[Path]) -> Iterator[str]:
    """The documents of the files: a .jsonl file holds one per line (its "text" field), any other file is one."""
    for path in files:
        try:
            if path.suffix != ".jsonl":
                yield path.read_text(encoding="utf-8")
                continue
            with path.open(encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if line.strip():
                        yield _jsonl_text(line, path, line_no)
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {path}: {e}") from None


def _jsonl_text(line: str, path: Path, line_no: int) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f'{path}:{line_no}: expected an object with a "text" string field')
    return record["text"]


def train_tokenizer(inputs: Iterable[str | Path], vocab_size: int, out_path: str | Path) -> Path:
    """A SentencePiece BPE vocabulary (Llama 2's options) trained on the documents of the inputs."""
    return train_sentencepiece(documents(input_files(inputs)), vocab_size, out_path,
                               input_sentence_size=2_000_000, shuffle_input_sentence=True)


# -- tokenizing (in worker processes) ----------------------------------------------------------------
_worker_tokenizer = None


def _load_worker_tokenizer(path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = load_tokenizer(path)


def _encode_documents(texts: list[str]) -> tuple[int, int, np.ndarray]:
    """(documents, bytes of text, ids): BOS ids EOS of every non-empty text, concatenated."""
    tok = _worker_tokenizer
    ids = []
    for text in texts:
        if text.strip():
            ids += tok.encode(text, bos=tok.bos_id is not None, eos=tok.eos_id is not None)
    return len(texts), sum(len(t.encode("utf-8")) for t in texts), np.asarray(ids, dtype=np.int64)


def _chunks(items: Iterator[str], size: int = 256) -> Iterator[list[str]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode_all(docs: Iterator[str], tokenizer: Path, workers: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """`_encode_documents` of each chunk of documents, in input order; with workers > 1 in a process pool."""
    if workers <= 1:
        _load_worker_tokenizer(str(tokenizer))
        yield from map(_encode_documents, _chunks(docs))
        return
    ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")  # fork: no re-import
    with ctx.Pool(workers, initializer=_load_worker_tokenizer, initargs=(str(tokenizer),)) as pool:
        yield from pool.imap(_encode_documents, _chunks(docs))


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits, else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


# -- prepare -------------------------------------------------------------------------------------------
def prepare(
    inputs: Iterable[str | Path],
    tokenizer: str | Path,
    out_dir: str | Path,
    val_fraction: float = 0.01,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenize the inputs into token shards in out_dir (see the module docstring); return the meta dict.

    The last `val_fraction` of the token stream is the validation split.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    files = input_files(inputs)
    tok = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until the new meta.json lands
    dtype = token_dtype(tok.vocab_size)
    workers = workers or min(os.cpu_count() or 1, 8)

    stream = out_dir / f".tokens.tmp-{os.getpid()}"  # every token, before the split
    n_tokens = n_docs = 0
    size = sum(p.stat().st_size for p in files)
    try:
        with stream.open("wb") as f, tqdm(total=size, unit="B", unit_scale=True, desc="tokenizing",
                                          disable=not progress) as bar:
            for docs, n_bytes, ids in _encode_all(documents(files), tok.path, workers):
                f.write(ids.astype(dtype).tobytes())
                n_tokens += len(ids)
                n_docs += docs
                bar.update(n_bytes)
        if n_tokens == 0:
            raise DataError(f"the inputs ({', '.join(map(str, inputs))}) contain no text")
        tokens = np.memmap(stream, dtype=dtype, mode="r")
        n_val = max(1, round(n_tokens * val_fraction))
        splits = {"train": _write_shards(tokens[: n_tokens - n_val], out_dir, "train"),
                  "val": _write_shards(tokens[n_tokens - n_val:], out_dir, "val")}
        del tokens
    except OSError as e:
        raise DataError(f"could not write the token shards in {out_dir} ({e.strerror or e}); "
                        "free some disk space or choose another --out") from None
    finally:
        stream.unlink(missing_ok=True)

    tokenizer_file = _copy_tokenizer(tok.path, out_dir)
    meta = {
        "format": FORMAT, "version": VERSION, "tokenizer": tokenizer_file, "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id, "eos_id": tok.eos_id, "dtype": dtype.name, "documents": n_docs,
        "sources": [str(p) for p in files], "splits": splits,
    }
    with atomic_output(out_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _write_shards(tokens: np.ndarray, out_dir: Path, split: str) -> dict:
    names = []
    for i, start in enumerate(range(0, len(tokens), SHARD_TOKENS)):
        name = f"{split}_{i:03d}.bin"
        with atomic_output(out_dir / name) as tmp:
            tokens[start:start + SHARD_TOKENS].tofile(tmp)
        names.append(name)
    return {"tokens": int(len(tokens)), "shards": names}


def _copy_tokenizer(path: Path, out_dir: Path) -> str:
    """Keep the tokenizer file beside the tokens (the trainer saves it with the model); return its name."""
    if path.resolve() != (out_dir / path.name).resolve():
        with atomic_output(out_dir / path.name) as tmp:
            shutil.copyfile(path, tmp)
    return path.name


# -- reading prepared data ---------------------------------------------------------------------------
class TokenData:
    """A prepared folder: its meta, and each split's tokens as one memory-mapped array (no copy in RAM)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.folder} holds no prepared data (no meta.json); "
                            f"run `llamalab data prepare TEXT... --tokenizer T --out {self.folder}` first")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{meta_path}: unreadable ({e}); prepare the data again") from None
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise DataError(f"{meta_path} is not llamalab token data of version {VERSION}; prepare the data again")
        self.vocab_size: int = self.meta["vocab_size"]
        self.tokenizer_path = self.folder / self.meta["tokenizer"]
        self._splits = {split: self._map(split) for split in ("train", "val")}

    def _map(self, split: str) -> TokenStream:
        dtype = np.dtype(self.meta["dtype"])
        info = self.meta["splits"][split]
        shards = []
        for name in info["shards"]:
            path = self.folder / name
            if not path.is_file():
                raise DataError(f"shard {path} is missing; prepare the data again")
            shards.append(np.memmap(path, dtype=dtype, mode="r"))
        tokens = TokenStream(shards)
        if len(tokens) != info["tokens"]:
            raise DataError(f"{split} shards of {self.folder} hold {len(tokens)} tokens, meta.json says "
                            f"{info['tokens']}; prepare the data again")
        return tokens

    def tokens(self, split: str) -> TokenStream:
        return self._splits[split]


class TokenStream:
    """Memory-mapped shards read as one sequence of tokens (slices only)."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])  # where each shard begins in the stream

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, where: slice) -> np.ndarray:
        start, stop, _ = where.indices(len(self))
        pieces = []
        shard = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            offset = start - self.starts[shard]
            piece = self.shards[shard][offset: offset + stop - start]
            pieces.append(piece)
            start, shard = start + len(piece), shard + 1
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def windows(tokens: TokenStream, seq_len: int) -> int:
    """How many non-overlapping (input, target) windows of seq_len tokens the array holds."""
    return max(0, (len(tokens) - 1) // seq_len)


def window_batch(tokens: TokenStream, indices: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(indices), seq_len) int64, of the windows at `indices`."""
    rows = np.stack([tokens[i * seq_len: i * seq_len + seq_len + 1] for i in indices]).astype(np.int64)
    rows = torch.from_numpy(rows)  # (batch, seq_len + 1)
    return rows[:, :-1], rows[:, 1:]


class Batches:
    """Global batches of shuffled windows; each process takes its rows. State: (epoch, index in epoch).

    Every step takes the next `global_batch` windows of this epoch's permutation (a pure function of
    seed and epoch); the windows left over at the end of an epoch are skipped. Rank r of `world` gets
    rows r·global_batch/world ... (r+1)·global_batch/world − 1, so any split over processes and
    accumulation steps sees the same global batch.
    """

    def __init__(self, tokens: TokenStream, seq_len: int, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        self.tokens, self.seq_len, self.global_batch = tokens, seq_len, global_batch
        self.seed, self.rank, self.world = seed, rank, world
        self.n_windows = windows(tokens, seq_len)
        if self.n_windows < global_batch:
            raise DataError(
                f"a global batch of {global_batch} sequences of {seq_len} tokens needs at least "
                f"{global_batch * seq_len + 1} training tokens, the data has {len(tokens)}; "
                "use a smaller batch size or sequence length, or more text"
            )
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n_windows)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of the next global batch: (inputs, targets), each (global_batch/world, seq_len)."""
        if self.index + self.global_batch > self.n_windows:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        per_rank = self.global_batch // self.world
        start = self.index + self.rank * per_rank
        batch = window_batch(self.tokens, self._order[start:start + per_rank], self.seq_len)
        self.index += self.global_batch
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()
