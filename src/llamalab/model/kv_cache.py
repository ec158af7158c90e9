"""Where a batch's tokens go (`Placement`) and the KV cache that keeps the keys and values of past positions.

Every layer's attention owns its storage (written in place); `KVCache` is the model-wide handle its users
get from `Transformer.kv_cache`: its rows, its bytes, reserving room in a row, freeing, moving or clearing
one, so that no code outside `model/` touches the cache tensors. Two layouts sit behind that one handle:

- static (`LayerCache`, `KVCache`): every row preallocated to max_seq_len positions (what torch.compile and
  CUDA graphs capture);
- paged (`PagedLayerCache`, `PagedKVCache`): a pool of fixed-size blocks and a block table per row, so that
  memory follows the positions reserved (vLLM's PagedAttention layout). Attention gathers the rows' blocks
  (one `index_select` per layer into (n_kv_heads, bsz, kv_len, head_dim), whose (kv_len, head_dim) planes SDPA
  reads without another copy) and runs the same SDPA on them: one extra copy of the positions read per layer and
  step (bench/paged_attention.py measures it). The C decode step (quantize/cpu_decode.c) reads the blocks in place
  instead, through `block_layout()`.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Placement:
    """Where the tokens (bsz, seqlen) of one forward pass sit and what each of them attends to.

    `kv_len` None means no cache: plain causal attention over the tokens themselves. Otherwise row i of
    the batch is cache row `first_row + i`, the keys and values are written at `positions`, and attention
    reads the first `kv_len` cache positions under `mask` (None: every one of them, or `causal`).
    """

    positions: torch.Tensor  # (1 or bsz, seqlen) position of every token, for RoPE and the cache writes
    start: int | None = 0  # the position shared by every row's first token; None when each row has its own
    first_row: int = 0
    kv_len: int | None = None
    mask: torch.Tensor | None = None  # bool (1 or bsz, 1, seqlen, kv_len): True where a query sees a key
    causal: bool = True
    block_table: torch.Tensor | None = None  # paged cache: (bsz, blocks per row) block ids of the batch's rows
    # packed parts (Transformer.forward_packed): (begin, end, (b, s), placement) of each part's tokens in the pack
    segments: list[tuple[int, int, tuple[int, int], Placement]] | None = None


class LayerCache(nn.Module):
    """One layer's keys and values, preallocated: (batch_size, n_kv_heads, max_seq_len, head_dim) each."""

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys' and values' storage, for code that hands the cache's memory on (a C kernel, a compiled region's
        inputs) without looking inside it."""
        return self.k, self.v

    def update(self, k: torch.Tensor, v: torch.Tensor, where: Placement) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (bsz, n_kv_heads, seqlen, head_dim) where `where` says; return the keys and values attention
        reads, (bsz, n_kv_heads, kv_len, head_dim) each."""
        bsz, _, seqlen, _ = k.shape
        rows = slice(where.first_row, where.first_row + bsz)
        if where.start is not None:  # one span for every row: a slice assignment
            span = slice(where.start, where.start + seqlen)
            self.k[rows, :, span] = k
            self.v[rows, :, span] = v
        else:
            index = where.positions[:, None, :, None].expand_as(k)  # (bsz, n_kv_heads, seqlen, head_dim)
            self.k[rows].scatter_(2, index, k)
            self.v[rows].scatter_(2, index, v)
        return self.k[rows, :, : where.kv_len], self.v[rows, :, : where.kv_len]


class PagedLayerCache(nn.Module):
    """One layer's keys and values in fixed-size blocks: (n_kv_heads, num_blocks, block_size, head_dim) each (heads
    outermost, so that a gather of blocks leaves each head's positions contiguous). Allocated uninitialized, so that
    untouched blocks take no memory on CPU; `PagedKVCache` zeroes a block the first time it hands it out."""

    def __init__(self, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int, device=None, dtype=None):
        super().__init__()
        shape = (n_kv_heads, num_blocks, block_size, head_dim)
        self.register_buffer("k", torch.empty(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.empty(shape, device=device, dtype=dtype), persistent=False)
        # where update() gathers the rows' keys and values: reused step after step (a fresh multi-MB tensor per
        # call cost thousands of page faults per decode step on CPU); PagedKVCache shares one pair by all layers,
        # since a layer's attention reads them before the next layer gathers
        self.gathered = (torch.empty(0, device=device, dtype=dtype), torch.empty(0, device=device, dtype=dtype))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys' and values' block pools (see LayerCache.tensors)."""
        return self.k, self.v

    @torch.no_grad()
    def zero_blocks(self, blocks: list[int]) -> None:
        """Zero these blocks (masked positions are read too: garbage there could be NaN, and 0 x NaN is NaN)."""
        index = torch.tensor(blocks, device=self.k.device)
        self.k.index_fill_(1, index, 0)  # one op per tensor: a 4,000-token prompt's 250 blocks one by one took ~40 ms
        self.v.index_fill_(1, index, 0)

    def update(self, k: torch.Tensor, v: torch.Tensor, where: Placement) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (bsz, n_kv_heads, seqlen, head_dim) into the rows' blocks; return the first kv_len positions
        of each row, gathered: (bsz, n_kv_heads, kv_len, head_dim) each."""
        bsz, heads, seqlen, head_dim = k.shape
        size = self.k.shape[2]
        positions = where.positions.expand(bsz, seqlen)  # (bsz, seqlen)
        slots = where.block_table.gather(1, positions // size) * size + positions % size  # (bsz, seqlen) in the pool
        # index_copy_ into the flattened pool: ~50x faster than k[:, blocks, offsets] = ... for a decode step on CPU
        for pool, new in ((self.k, k), (self.v, v)):
            values = new.transpose(0, 1).reshape(heads, -1, head_dim)  # (n_kv_heads, bsz * seqlen, head_dim)
            pool.view(heads, -1, head_dim).index_copy_(1, slots.flatten(), values)
        table = where.block_table[:, : -(-where.kv_len // size)]  # (bsz, blocks read)
        keys, values = self.gathered
        return self._gather(self.k, table, where.kv_len, keys), self._gather(self.v, table, where.kv_len, values)

    @staticmethod
    def _gather(pool: torch.Tensor, table: torch.Tensor, length: int, out: torch.Tensor) -> torch.Tensor:
        heads, _, size, head_dim = pool.shape
        bsz, blocks = table.shape
        if torch.is_grad_enabled():  # out= records no gradient: a fresh tensor
            rows = pool.index_select(1, table.flatten())  # (n_kv_heads, bsz * blocks, block_size, head_dim)
        else:  # no elements, the storage kept: index_select grows it only past its largest size so far
            rows = torch.index_select(pool, 1, table.flatten(), out=out.resize_(0))
        rows = rows.view(heads, bsz, blocks * size, head_dim)[:, :, :length]  # (n_kv_heads, bsz, length, head_dim)
        return rows.transpose(0, 1)  # (bsz, n_kv_heads, length, head_dim)


class KVCache:
    """The model's KV cache as its users see it: rows ("slots") of up to `max_seq_len` positions each."""

    block_table = None  # static rows: no blocks
    watermark = 0  # blocks an admission leaves free for the running rows (static rows need none)
    _rows = None  # block_layout's tables: row r is block r

    def __init__(self, layers: list[LayerCache]):
        self.layers = layers

    @property
    def batch_size(self) -> int:
        return self.layers[0].k.shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.layers[0].k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's keys and values."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)

    def bytes_per_token(self) -> int:
        """Bytes one cached position of one row takes, over every layer."""
        return self.nbytes // (self.batch_size * self.max_seq_len)

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values) storage, (batch_size, n_kv_heads, max_seq_len, head_dim) each: for a kernel
        that reads and writes the cache in place."""
        return [layer.tensors() for layer in self.layers]

    def block_layout(self) -> tuple[torch.Tensor, int, int, int]:
        """Where a kernel finds a row's positions in `layer_tensors()`: (block tables (batch_size, blocks per row),
        block_size, block_stride, head_stride), so that position t of row r keeps head h's vector (head_dim values)
        at tables[r, t // block_size] * block_stride + h * head_stride + (t % block_size) * head_dim. A static row is
        one block of max_seq_len positions: its table is [r]."""
        k = self.layers[0].k  # (batch_size, n_kv_heads, max_seq_len, head_dim)
        if self._rows is None or len(self._rows) != self.batch_size:
            self._rows = torch.arange(self.batch_size, device=k.device)[:, None]  # (batch_size, 1)
        return self._rows, self.max_seq_len, k.stride(0), k.stride(1)

    @torch.no_grad()
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst, in every layer."""
        for layer in self.layers:
            layer.k[dst, :, :length] = layer.k[src, :, :length]
            layer.v[dst, :, :length] = layer.v[src, :, :length]

    @torch.no_grad()
    def clear_row(self, row: int) -> None:
        """Zero a row (a freed slot holds nothing of the request that used it)."""
        for layer in self.layers:
            layer.k[row].zero_()
            layer.v[row].zero_()

    def reserve(self, row: int, length: int) -> bool:
        """Make room for positions 0..length-1 in row; False when there is none (a static row always has it)."""
        return length <= self.max_seq_len

    def can_reserve(self, length: int, spare: int = 0) -> bool:
        """Whether a fresh row of `length` positions would fit now (leaving `spare` blocks free, when paged)."""
        return length <= self.max_seq_len

    def free_row(self, row: int) -> None:
        """Give back a row's room (static rows keep theirs)."""

    prefix_caching = False  # static rows share nothing: the prefix operations below do nothing

    def knows_block(self, prompt: list[int]) -> bool:
        return False

    def attach_prefix(self, row: int, prompt: list[int]) -> int:
        return 0

    def register_prefix(self, row: int, prompt: list[int]) -> None:
        pass


class PagedKVCache:
    """A paged KV cache: `num_blocks` blocks of `block_size` positions shared by `batch_size` rows, each row
    holding a block table of up to max_seq_len / block_size blocks, filled by `reserve` and emptied by
    `free_row`. One extra block takes the writes of positions no row reserved (right padding, finished rows).

    With `prefix_caching`, full blocks of prompts are kept by content (a hash chained over the blocks before
    them) and reference-counted: `attach_prefix` gives a new row the blocks of its prompt's longest cached
    prefix, `register_prefix` offers a prefilled row's prompt blocks, and blocks nobody holds stay cached until
    the least recently freed is taken for new positions."""

    def __init__(self, layers: list[PagedLayerCache], batch_size: int, max_seq_len: int,
                 prefix_caching: bool = False):
        self.layers = layers
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        total, self.block_size = layers[0].k.shape[1], layers[0].k.shape[2]
        self.num_blocks = total - 1
        self.spare = total - 1  # the block the unreserved positions are written to
        per_row = -(-max_seq_len // self.block_size)
        self.block_table = torch.full((batch_size, per_row), self.spare, dtype=torch.long, device=layers[0].k.device)
        self.free = list(range(self.num_blocks - 1, -1, -1))  # popped from the end: block 0 first
        self.zeroed = [False] * self.num_blocks  # blocks handed out at least once (zeroed then)
        for layer in layers:
            layer.zero_blocks([self.spare])
            layer.gathered = layers[0].gathered
        self.row_blocks: list[list[int]] = [[] for _ in range(batch_size)]
        self.prefix_caching = prefix_caching
        self.refs = [0] * self.num_blocks  # rows holding each block
        self.hash_of: dict[int, int] = {}  # block -> content hash, for the blocks a prefix may reuse
        self.block_of: dict[int, int] = {}  # content hash -> block
        self.unused: OrderedDict[int, None] = OrderedDict()  # cached blocks no row holds, least recently freed first
        self.prefix_queries = self.prefix_hits = 0  # prompt blocks looked up, and found
        self.watermark = self.num_blocks // 100  # blocks an admission leaves free for the running rows to grow into

    @property
    def nbytes(self) -> int:
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)

    def bytes_per_token(self) -> int:
        return self.nbytes // ((self.num_blocks + 1) * self.block_size)

    def layer_tensors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's (keys, values) block pools, (n_kv_heads, num_blocks + 1, block_size, head_dim) each."""
        return [layer.tensors() for layer in self.layers]

    def block_layout(self) -> tuple[torch.Tensor, int, int, int]:
        """(block tables, block_size, block_stride, head_stride): see KVCache.block_layout."""
        k = self.layers[0].k  # (n_kv_heads, num_blocks + 1, block_size, head_dim)
        return self.block_table, self.block_size, k.stride(1), k.stride(0)

    @property
    def used_blocks(self) -> int:
        """Blocks rows hold now (cached blocks no row holds count as free)."""
        return self.num_blocks - len(self.free) - len(self.unused)

    @property
    def prefix_hit_rate(self) -> float:
        """The share of the full prompt blocks looked up in the prefix cache that were found there (0 before any)."""
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_for(self, length: int) -> int:
        return -(-length // self.block_size)

    @property
    def available(self) -> int:
        """Blocks a reservation may take: free ones and cached ones no row holds."""
        return len(self.free) + len(self.unused)

    def can_reserve(self, length: int, spare: int = 0) -> bool:
        return length <= self.max_seq_len and self.blocks_for(length) + spare <= self.available

    def reserve(self, row: int, length: int) -> bool:
        held = self.row_blocks[row]
        need = self.blocks_for(length) - len(held)
        if length > self.max_seq_len or need > self.available:
            return False
        if need > 0:
            new = [self._take() for _ in range(need)]
            fresh = [block for block in new if not self.zeroed[block]]
            if fresh:  # handed out for the first time
                for layer in self.layers:
                    layer.zero_blocks(fresh)
                for block in fresh:
                    self.zeroed[block] = True
            self.block_table[row, len(held) : len(held) + need] = torch.tensor(new)
            held += new
        return True

    def _take(self) -> int:
        """A block for new positions: a free one, else the least recently freed cached one (forgotten); `reserve`
        zeroes it if it was never handed out."""
        if self.free:
            block = self.free.pop()
        else:
            block, _ = self.unused.popitem(last=False)
            del self.block_of[self.hash_of.pop(block)]
        self.refs[block] = 1
        return block

    def free_row(self, row: int) -> None:
        for block in reversed(self.row_blocks[row]):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.hash_of:
                    self.unused[block] = None  # kept for a later prompt with the same prefix
                else:
                    self.free.append(block)
        self.row_blocks[row] = []
        self.block_table[row] = self.spare

    def _prompt_hashes(self, prompt: list[int], blocks: int) -> list[int]:
        """The chained content hashes of the prompt's first `blocks` full blocks."""
        hashes, h, size = [], 0, self.block_size
        for i in range(blocks):
            h = hash((h, tuple(prompt[i * size : (i + 1) * size])))
            hashes.append(h)
        return hashes

    def knows_block(self, prompt: list[int]) -> bool:
        """Whether the prompt's first full block is in the prefix cache."""
        return len(prompt) >= self.block_size and self._prompt_hashes(prompt, 1)[0] in self.block_of

    def attach_prefix(self, row: int, prompt: list[int]) -> int:
        """Give an empty row the cached blocks of the prompt's longest known prefix of full blocks (never its last
        token, which must be computed); return the positions they hold."""
        if not self.prefix_caching:
            return 0
        hashes = self._prompt_hashes(prompt, (len(prompt) - 1) // self.block_size)
        self.prefix_queries += len(hashes)
        held = self.row_blocks[row]
        for h in hashes:
            block = self.block_of.get(h)
            if block is None:
                break
            self.refs[block] += 1
            self.unused.pop(block, None)
            held.append(block)
        self.prefix_hits += len(held)
        if held:
            self.block_table[row, : len(held)] = torch.tensor(held)
        return len(held) * self.block_size

    def register_prefix(self, row: int, prompt: list[int]) -> None:
        """Offer the full blocks of a row's prefilled prompt to later prompts with the same prefix."""
        if not self.prefix_caching:
            return
        for block, h in zip(self.row_blocks[row], self._prompt_hashes(prompt, len(prompt) // self.block_size)):
            if block not in self.hash_of and h not in self.block_of:
                self.hash_of[block], self.block_of[h] = h, block

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Row dst takes over row src's blocks (no keys or values move); row src is left empty."""
        self.free_row(dst)
        self.row_blocks[dst], self.row_blocks[src] = self.row_blocks[src], []
        self.block_table[dst] = self.block_table[src]
        self.block_table[src] = self.spare

    def clear_row(self, row: int) -> None:
        self.free_row(row)
