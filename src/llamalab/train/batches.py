"""Prepared token data read back for training: the shards memory-mapped as one stream, and the batches drawn from it.

`TokenData` maps a folder written by `llamalab.data.prepare` without reading it into memory; `Batches` cuts
the train tokens into windows and deals them out, shuffled per epoch, from a position that a checkpoint
saves and restores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from llamalab.data.shards import FORMAT, VERSION
from llamalab.errors import DataError
from llamalab.files import read_json


class TokenData:
    """A prepared folder: its meta, and each split's tokens as one memory-mapped array (no copy in RAM)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{self.folder} holds no prepared data (no meta.json); "
                            f"run `llamalab data prepare TEXT... --tokenizer T --out {self.folder}` first")
        self.meta = read_json(meta_path, DataError)
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
