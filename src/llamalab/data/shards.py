"""Text files, folders and .jsonl → token shards.

`prepare` writes, into one folder, `train_NNN.bin` / `val_NNN.bin` shards of raw uint16 (uint32 when
the vocabulary needs it) token ids, each document as BOS ids EOS, the tokenizer file, and `meta.json`
(written last, so a folder with a meta.json is complete). `llamalab.train.batches.TokenData` maps them
back for training.
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
from tqdm import tqdm

from llamalab.errors import DataError
from llamalab.files import atomic_output, write_json
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
    write_json(out_dir / "meta.json", meta)
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
