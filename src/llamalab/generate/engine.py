"""The decode engine both `Generation` (generate, chat) and the server's `Scheduler` drive.

The model's KV cache has `slots` rows; each running `Sequence` owns one. `admit` prefills new sequences
into the next free rows and samples their first tokens; `step` decodes one token for every row in one
forward pass, each row at its own position; `release` frees the rows of finished sequences, moving the
last rows into the holes so that the running rows are always 0..n-1. Sampling, log-probabilities, the
token history the penalties read, grammar masks and stop handling happen here, once, for every caller.

On a paged cache a row holds blocks for the positions it has written and the one it writes next: its prompt
at admission, then a block more whenever it crosses a block boundary. When a step needs a block that is not
there, the youngest running sequence is preempted: its blocks are freed (offered to the prefix cache first)
and it goes to `preempted`, for its caller to admit again later; re-admitted, its prompt and the tokens it
already sampled are prefilled and it goes on sampling with its own random generator, so it gives the tokens
it would have given unpreempted, and none twice.

Per-row sampling state lives on the `Sequence`: its `SamplingParams` (temperature, top-k/p, min-p,
repetition / presence / frequency penalties, logit bias, seed), an optional grammar `constraint`, and
`processors`, callables that edit that row's logits (vocab,) before it is sampled.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Sequence as Seq
from typing import Protocol

import torch

from llamalab.errors import ConfigError
from llamalab.generate.sampling import SamplingParams, make_generator, sample

# A decode step: (tokens (n, 1), start_pos int or (n,) tensor, kv_len) -> next-token logits (n, vocab).
# kv_len (with per-row positions) is how many cache positions attention reads; a compiled step may ignore it, and a
# step whose `ragged` attribute is True (the C step) reads each row's own positions only.
Step = Callable[..., torch.Tensor]
LogitsProcessor = Callable[["Sequence", torch.Tensor], torch.Tensor]  # (row, logits (vocab,)) -> logits (vocab,)

PREFILL_LOGITS_BYTES = 256 * 2**20  # full-sequence prefill logits are computed in chunks of at most this size
# prompt tokens a step prefills per decoding row, when that is more than prefill_chunk: a prompt token costs a packed
# step about half what a decoding row does (CPU, stories15M shape: 32 tokens add ~10 ms to a 25-row step of ~39 ms),
# so with many rows decoding the step grows by about as much as with prefill_chunk beside a few, and a burst of new
# requests (32 clients) is read in half the steps (bench/serve.py: throughput at 32 clients)
PROMPT_TOKENS_PER_ROW = 2


class KVCacheLike(Protocol):
    """What the engine needs of a model's KV cache (`llamalab.model.KVCache` or `PagedKVCache`)."""

    batch_size: int
    max_seq_len: int
    nbytes: int
    watermark: int  # blocks an admission leaves free for the running rows (0 for static rows)

    def can_reserve(self, length: int, spare: int = 0) -> bool: ...

    def reserve(self, row: int, length: int) -> bool: ...

    def free_row(self, row: int) -> None: ...

    prefix_caching: bool  # full prompt blocks shared by content (paged); the operations below do nothing without

    def knows_block(self, prompt: list[int]) -> bool: ...

    def attach_prefix(self, row: int, prompt: list[int]) -> int: ...

    def register_prefix(self, row: int, prompt: list[int]) -> None: ...

    def move_row(self, src: int, dst: int, length: int) -> None: ...


class CachedModel(Protocol):
    """What `generate/` relies on in a model (`llamalab.model.Transformer`)."""

    args: object  # ModelArgs: vocab_size, max_seq_len
    device: torch.device
    kv_cache: KVCacheLike | None

    def setup_cache(self, batch_size: int, max_seq_len: int) -> KVCacheLike: ...

    def __call__(self, tokens: torch.Tensor, start_pos: int | torch.Tensor = 0, *, first_row: int = 0,
                 kv_len: int | None = None, last_only: bool = False) -> torch.Tensor: ...


def eager_step(model: CachedModel) -> Step:
    """The plain decode step: one forward pass computing only the last position's logits."""

    def step(tokens: torch.Tensor, start_pos: int | torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        return model(tokens, start_pos, kv_len=kv_len, last_only=True)[:, -1]

    return step


class ModelCalls:
    """The engine's operations on the model; with tensor parallelism the server repeats them on every rank."""

    def __init__(self, model: CachedModel, step: Step | None = None):
        self.model, self.step = model, step or eager_step(model)
        self.device = model.device
        self.ragged = getattr(self.step, "ragged", False)  # `decode` reads each row's own positions, not kv_len

    def prefill(self, tokens: torch.Tensor, start_pos: int, first_row: int, last_only: bool) -> torch.Tensor:
        """Write tokens (bsz, seqlen) at start_pos into cache rows first_row..; logits (bsz, seqlen or 1, vocab)."""
        return self.model(tokens, start_pos, first_row=first_row, last_only=last_only)

    def decode(self, tokens: torch.Tensor, start_pos: int | torch.Tensor, kv_len: int | None) -> torch.Tensor:
        """One token (n, 1) for each of the rows 0..n-1; next-token logits (n, vocab)."""
        return self.step(tokens, start_pos, kv_len)

    packs = True  # `packed` runs its parts in one forward pass

    def packed(self, parts: list[tuple[torch.Tensor, int | torch.Tensor, int, int | None]]) -> torch.Tensor:
        """Cache writes (tokens (b, s), start_pos, first_row, kv_len) in one forward pass (`forward_packed`); the
        next-token logits of each part's rows, in order (rows, vocab)."""
        return self.model.forward_packed(parts)

    def move_row(self, src: int, dst: int, length: int) -> None:
        self.model.kv_cache.move_row(src, dst, length)

    def stop(self) -> None:
        """No more calls will come."""


class Sequence:
    """One row of generation: its prompt, what it sampled, how to sample and when to stop."""

    def __init__(self, prompt: Seq[int], max_tokens: int, params: SamplingParams = SamplingParams(),
                 stop_ids: Iterable[int] = (), logprobs: bool = False, top_logprobs: int | None = None,
                 echo: bool = False, constraint=None):
        self.prompt = list(prompt)
        self.max_tokens = max_tokens
        self.params = params
        self.stop_ids = frozenset(stop_ids)
        self.top_logprobs = top_logprobs  # n: the engine hands `accept` the n likeliest (ids, logprobs) too
        self.constraint = constraint  # a grammar (generate.constrained.TokenConstraint) the tokens follow, or None
        self.processors: list[LogitsProcessor] = []  # per-row logit edits applied before sampling
        self.output: list[int] = []  # generated ids; a stop id that ended the row is not among them
        self.logprobs: list[float] | None = [] if logprobs else None  # log p of each output token (raw model)
        self.prompt_logprobs: list[float] | None = [] if echo else None  # log p of each prompt token after the first
        self.sampled = 0  # tokens sampled, a final stop id included
        self.last_token = self.prompt[-1] if self.prompt else None  # the token the next decode step feeds
        self.finish_reason: str | None = None  # "stop" (a stop id or stop string) or "length"
        self.generator: torch.Generator | None = None  # set by the engine on the model's device
        self.arrival: int | None = None  # the engine's admission count when first admitted (higher: younger)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None or self.top_logprobs is not None

    def finish(self, reason: str = "stop") -> None:
        """End the row (the engine on a stop id or the length limit, the text layer on a stop string)."""
        if self.finish_reason is None:
            self.finish_reason = reason

    def accept(self, token: int, logprob: float | None = None, top: tuple[list[int], list[float]] | None = None
               ) -> bool:
        """Take a sampled token (`top`: the likeliest (ids, logprobs) when top_logprobs is set); False if it was a
        stop id. The row finishes on a stop id or at max_tokens."""
        if not self.take(token, logprob):
            self.finish("stop")
            return False
        if len(self.output) >= self.max_tokens:
            self.finish("length")
        return True

    def take(self, token: int, logprob: float | None = None) -> bool:
        """The bookkeeping of `accept`: count the token, advance the grammar, append it unless it is a stop id."""
        self.sampled += 1
        self.last_token = token
        if token in self.stop_ids:
            return False
        if self.constraint is not None:
            self.constraint.advance(token)
        self.output.append(token)
        if self.logprobs is not None:
            self.logprobs.append(logprob)
        return True

    def prefilled(self) -> None:
        """Called once the prompt is in the cache (and scored, with echo), before the first token is sampled."""

    def score_prompt(self, logprobs: torch.Tensor) -> None:
        """Take the next chunk of prompt scores: logprobs (k, vocab) of the positions before the next k prompt
        tokens."""
        if self.prompt_logprobs is None:
            return
        start = len(self.prompt_logprobs) + 1
        targets = torch.tensor(self.prompt[start : start + len(logprobs)], device=logprobs.device)
        self.prompt_logprobs += logprobs.gather(1, targets[:, None])[:, 0].tolist()


class Engine:
    """Up to `slots` sequences over the model's KV cache (reused when large enough, else allocated)."""

    def __init__(self, model: CachedModel, slots: int, max_seq_len: int, calls: ModelCalls | None = None,
                 step: Step | None = None, vocab_size: int | None = None, prefill_chunk: int | None = None):
        cache = model.kv_cache
        if cache is None or cache.batch_size < slots or cache.max_seq_len < max_seq_len:
            cache = model.setup_cache(slots, max_seq_len)
        self.model, self.cache, self.slots, self.max_seq_len = model, cache, slots, cache.max_seq_len
        self.calls = calls or ModelCalls(model, step)
        self.device = model.device
        self.vocab_size = vocab_size or model.args.vocab_size  # ids past the tokenizer's are never sampled
        self.rows: list[Sequence] = []  # cache row i runs rows[i]
        self.cached: list[int] = []  # positions of row i written to the cache
        # each row's prompt and sampled tokens (-1 beyond), what the penalties read
        self.history = torch.full((slots, self.max_seq_len), -1, dtype=torch.long, device=self.device)
        self._last: torch.Tensor | None = None  # every row's last sampled token (n,), while no row came or went
        # prompt tokens a step prefills beside the decoding rows, in the same forward pass (None: prompts are
        # prefilled whole when admitted)
        self.prefill_chunk = prefill_chunk
        self.fill_to: list[int] = []  # positions row i prefills before it samples: its prompt and earlier output
        self.preempted: list[Sequence] = []  # sequences whose rows were taken back, oldest first, to admit again
        self.arrivals = 0  # sequences admitted so far (their `arrival` numbers)
        self.preemptions = 0  # rows taken back so far

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    def fits(self, seq: Sequence) -> bool:
        """Whether `seq` can be admitted now: a free row, and room in the cache for its prompt (with the tokens it
        sampled before a preemption) and its next token, leaving a watermark of blocks for the running rows."""
        spare = self.cache.watermark if self.rows else 0  # an empty engine takes whatever fits
        return self.free > 0 and self.cache.can_reserve(self._reserved(seq), spare)

    def waits_for_prefix(self, seq: Sequence) -> bool:
        """Whether admitting `seq` had better wait for a row still prefilling the same first block of prompt: once
        that row's prompt is in, `seq` shares its blocks instead of computing them again (prefix caching only)."""
        cache = self.cache
        if not cache.prefix_caching or seq.sampled or len(seq.prompt) <= cache.block_size:
            return False
        head = seq.prompt[: cache.block_size]
        computing = any(self._prefilling(i) and s.prompt[: cache.block_size] == head for i, s in enumerate(self.rows))
        return computing and not cache.knows_block(seq.prompt)

    def _reserved(self, seq: Sequence) -> int:
        """The positions a sequence's row reserves when admitted: its context and the next token's."""
        return min(len(seq.prompt) + len(seq.output) + 1, self.max_seq_len)

    @staticmethod
    def _context(seq: Sequence) -> list[int]:
        """What an admission prefills: the prompt, and the tokens sampled before a preemption."""
        return seq.prompt + seq.output

    def _next_token(self, row: int) -> int:
        """The token a row feeds this step: while prefilling, its context's token at its next position (read without
        building the context: a step asks it of every filling row), else its last sampled token."""
        seq, position = self.rows[row], self.cached[row]
        if not self._prefilling(row):
            return seq.last_token
        n = len(seq.prompt)
        return seq.prompt[position] if position < n else seq.output[position - n]

    # -- admitting ------------------------------------------------------------------------------------
    def admit(self, seqs: Seq[Sequence]) -> list[list[int]]:
        """Prefill the sequences (right-padded, together) into the next free rows and sample their first tokens;
        each one's kept tokens ([] after a stop id, or for max_tokens 0). A preempted sequence is admitted again the
        same way: its prompt and earlier output are prefilled, and it samples its next token."""
        if len(seqs) > self.free:
            raise ConfigError(f"{len(seqs)} sequences do not fit the {self.free} free rows of the KV cache")
        first = len(self.rows)
        alone = len(seqs) == 1 and seqs[0].max_tokens > 0 and seqs[0].prompt_logprobs is None
        contexts = [self._context(seq) for seq in seqs]
        chunked = alone and self.prefill_chunk is not None  # prefilled by the coming steps, beside the decoding rows
        start = 0  # positions of a lone prompt already in cached prefix blocks
        for seq, context in zip(seqs, contexts):
            if len(seq.prompt) >= self.max_seq_len:
                raise ConfigError(
                    f"a prompt of {len(seq.prompt)} tokens leaves no room in {self.max_seq_len} positions")
            row = len(self.rows)
            if alone:
                start = self.cache.attach_prefix(row, context)
            if not self.cache.reserve(row, self._reserved(seq)):
                self.cache.free_row(row)
                raise ConfigError(f"no room in the KV cache for {self._reserved(seq)} more positions; admit it later")
            if seq.arrival is None:  # first admission (not a preempted sequence coming back)
                seq.max_tokens = min(seq.max_tokens, self.max_seq_len - len(seq.prompt))
                seq.generator = make_generator(seq.params.seed, self.device)
                seq.arrival, self.arrivals = self.arrivals, self.arrivals + 1
            self.history[row, : len(context)] = torch.tensor(context)
            self.history[row, len(context) :] = -1
            self.rows.append(seq)
            self.cached.append(len(context))
            self.fill_to.append(len(context))
        self._last = None
        if chunked:  # its chunks go in the coming steps, in the same forward passes as the decoding rows
            self.cached[first] = start
            return [[]]
        logits = self._prefill(first, list(seqs), start)  # (k, vocab)
        for row in range(first, first + len(seqs)):
            self._prefilled(row)
        sampling = [i for i, seq in enumerate(seqs) if seq.max_tokens > 0]
        for seq in seqs:
            if seq.max_tokens <= 0:
                seq.finish("length")
        new = [[] for _ in seqs]
        if sampling:
            kept = self._sample([first + i for i in sampling], logits[sampling])
            for i, tokens in zip(sampling, kept):
                new[i] = tokens
        return new

    def _prefilled(self, row: int) -> None:
        """A row's prompt is all in the cache: tell its sequence (once), offer its blocks to later prompts."""
        seq = self.rows[row]
        if not seq.sampled:
            seq.prefilled()
        self.cache.register_prefix(row, self._context(seq))

    def _prefill(self, first: int, seqs: list[Sequence], start: int = 0) -> torch.Tensor:
        """Run the right-padded prompts from position `start` (what cached prefix blocks already hold) through the
        model into rows first..; each one's next-token logits (k, vocab)."""
        bsz, lengths = len(seqs), self.fill_to[first : first + len(seqs)]
        longest = max(lengths)
        tokens = self.history[first : first + bsz, :longest].clamp(min=0)  # (bsz, longest), padding as token 0
        ends = [n - 1 for n in lengths]
        scoring = [s.prompt_logprobs is not None and not s.sampled for s in seqs]  # echo: the prompt scored once
        echo = any(scoring)
        chunk = max(1, PREFILL_LOGITS_BYTES // (4 * bsz * self.model.args.vocab_size))
        last = [None] * bsz
        for begin in range(start, longest, chunk):
            end = min(begin + chunk, longest)
            full = echo or any(begin <= e < end - 1 for e in ends)  # some row ends before the chunk's end
            logits = self.calls.prefill(tokens[:, begin:end], begin, first, last_only=not full)  # (bsz, n or 1, V)
            for row, e in enumerate(ends):
                if begin <= e < end:
                    last[row] = logits[row, e - begin if full else -1]
            if echo:
                for row, seq in enumerate(seqs):
                    scored = max(0, min(end, ends[row]) - begin)  # positions here that precede a prompt token
                    if scoring[row] and scored:
                        seq.score_prompt(logits[row, :scored, : self.vocab_size].float().log_softmax(dim=-1))
        return torch.stack(last)

    # -- decoding -------------------------------------------------------------------------------------
    def _prefilling(self, row: int) -> bool:
        """Whether the row's prompt is not all in the cache yet (chunked prefill)."""
        return self.cached[row] < self.fill_to[row]

    def _chunks(self, filling: list[int]) -> dict[int, int]:
        """This step's prompt chunks, oldest row first, each row's next prompt token left for the step itself: {row:
        the chunk's first position}; the rows' cached positions move past their chunks. The chunks hold prefill_chunk
        tokens in all, or PROMPT_TOKENS_PER_ROW per decoding row when that is more (no limit while no row decodes:
        nobody waits for a token)."""
        decoding = sum(not s.done for i, s in enumerate(self.rows) if i not in filling)
        most = self.max_seq_len * len(filling)
        chunks, budget = {}, max(self.prefill_chunk, PROMPT_TOKENS_PER_ROW * decoding) if decoding else most
        for row in sorted(filling, key=lambda i: self.rows[i].arrival):
            start = self.cached[row]
            end = min(start + budget, self.fill_to[row] - 1)
            if end > start:
                chunks[row], self.cached[row], budget = start, end, budget - (end - start)
            if budget <= 0:
                break
        return chunks

    def step(self) -> list[list[int]]:
        """Decode one token for every row (finished rows too, until released); each row's kept tokens.

        Rows still prefilling their prompts (chunked prefill) write chunks of their prompts (the budget `_chunks`
        sets) and their prompt's next token in the same forward pass as the others' tokens; a row samples once its
        prompt is all in."""
        self._grow()
        n = len(self.rows)
        if not n:  # every row was preempted
            return []
        filling = [i for i in range(n) if self._prefilling(i)]
        positions = self.cached
        if filling:
            self._last = None
            logits = self._forward_filling(filling)
        else:
            tokens = self._last if self._last is not None else torch.tensor(
                [s.last_token for s in self.rows], device=self.device)  # (n,)
            if all(p == positions[0] for p in positions):  # rows in step: one span, no mask
                logits = self.calls.decode(tokens[:, None], positions[0], None)
            elif self.calls.packs and not self.calls.ragged and len(runs := self._length_runs(positions)) > 1:
                # a far longer row: a part of its own
                logits = self.calls.packed([(tokens[a:b, None], torch.tensor(positions[a:b], device=self.device), a,
                                             max(positions[a:b]) + 1) for a, b in runs])
            else:
                start = torch.tensor(positions, device=self.device)  # (n,)
                logits = self.calls.decode(tokens[:, None], start, max(positions) + 1)
        # a finished row keeps decoding whatever it samples, at a position that stays in the cache
        self.cached = [min(p + 1, self.max_seq_len - 1) for p in self.cached]
        if not filling:
            return self._sample(list(range(n)), logits)
        ready = [i for i in range(n) if not self._prefilling(i)]
        for i in filling:
            if i in ready:  # its prompt is all in: the logits of its last prompt token give its first token
                self._prefilled(i)
        new = [[] for _ in range(n)]
        for i, kept in zip(ready, self._sample(ready, logits[ready]) if ready else []):
            new[i] = kept
        return new

    @staticmethod
    def _length_runs(positions: list[int]) -> list[tuple[int, int]]:
        """Rows 0..n-1 as runs [a, b) for a decode step: a row far longer than most (past twice the median position
        + 64) is a run of its own, so that the others' attention does not read (padded) up to its length."""
        limit = 2 * sorted(positions)[(len(positions) - 1) // 2] + 64
        runs, begin = [], 0
        for row, position in enumerate(positions):
            if position > limit:
                runs += [(begin, row)] if row > begin else []
                runs.append((row, row + 1))
                begin = row + 1
        return runs + ([(begin, len(positions))] if begin < len(positions) else [])

    def _forward_filling(self, filling: list[int]) -> torch.Tensor:
        """The forward pass of a step with prefilling rows; every row's next-token logits (n, vocab).

        Packed (`ModelCalls.packs`): one pass whose parts are each prefilling row's chunk and next token, and the
        runs of decoding rows between them, so a decoding row's attention reads its own positions, not the long
        prompt's. Otherwise (tensor parallelism) each chunk is a call of its own, then every row's token."""
        n, chunks = len(self.rows), self._chunks(filling)
        positions = self.cached  # after the chunks: each row's next position
        if self.calls.packs:
            parts, row = [], 0
            while row < n:
                if row in chunks:  # a chunk of its prompt and its next token: a part of its own
                    start = chunks[row]
                    parts.append((self.history[row : row + 1, start : positions[row] + 1], start, row, None))
                    row += 1
                    continue
                # one token per row (decoding, or filling without a chunk this step): runs of similar lengths, so
                # that many waiting prompts do not each cost an attention part of their own
                end = next((i for i in range(row, n) if i in chunks), n)
                tokens = torch.tensor([self._next_token(i) for i in range(row, end)], device=self.device)[:, None]
                for a, b in self._length_runs(positions[row:end]):
                    start = torch.tensor(positions[row + a : row + b], device=self.device)
                    parts.append((tokens[a:b], start, row + a, max(positions[row + a : row + b]) + 1))
                row = end
            return self.calls.packed(parts)
        for row, start in chunks.items():
            self.calls.prefill(self.history[row : row + 1, start : positions[row]], start, row, last_only=True)
        tokens = torch.tensor([self._next_token(i) for i in range(n)], device=self.device)  # (n,)
        return self.calls.decode(tokens[:, None], torch.tensor(positions, device=self.device), max(positions) + 1)

    def _sample(self, rows: list[int], logits: torch.Tensor) -> list[list[int]]:
        """Sample the next token of each listed row from its logits (len(rows), vocab) and hand it to its sequence."""
        seqs = [self.rows[i] for i in rows]
        logits = logits[:, : self.vocab_size]
        allowed = self._processed(seqs, logits)
        reads_history = any(s.params.repetition_penalty != 1 or s.params.counts_generated for s in seqs)
        previous = generated = None
        if reads_history:
            history = self.history[rows]  # (len(rows), max_seq_len)
            if any(s.params.repetition_penalty != 1 for s in seqs):
                previous = history
            if any(s.params.counts_generated for s in seqs):  # the completion only
                prompt_lens = torch.tensor([len(s.prompt) for s in seqs], device=self.device)
                columns = torch.arange(history.shape[1], device=self.device)
                generated = torch.where(columns >= prompt_lens[:, None], history, -1)
        generators = [s.generator for s in seqs]
        tokens = sample(allowed, [s.params for s in seqs], None if all(g is None for g in generators) else generators,
                        previous, generated)  # (len(rows),)
        chosen, tops = self._logprobs(seqs, logits, tokens)
        values = tokens.tolist()
        if reads_history:
            self._record(rows, seqs, values)
        kept = [[] for _ in rows]
        for j, (seq, token) in enumerate(zip(seqs, values)):
            if not seq.done and seq.accept(token, chosen[j], tops[j]):
                kept[j] = [token]
        self._last = tokens if rows == list(range(len(self.rows))) else None
        return kept

    def _processed(self, seqs: list[Sequence], logits: torch.Tensor) -> torch.Tensor:
        """The logits to sample from: grammar masks and each row's processors applied (the raw ones are kept)."""
        if any(s.constraint is not None for s in seqs):
            from llamalab.generate.constrained import constrain  # llguidance, only when a grammar is in use

            logits = constrain(logits, [s.constraint for s in seqs])
        if any(s.processors for s in seqs):
            logits = logits.clone()
            for j, seq in enumerate(seqs):
                for processor in seq.processors:
                    logits[j] = processor(seq, logits[j])
        return logits

    def _logprobs(self, seqs, logits, tokens) -> tuple[list, list]:
        """Each row's log p of its token under the raw logits, and its top_logprobs likeliest (ids, logprobs)."""
        if not any(s.wants_logprobs for s in seqs):
            return [None] * len(seqs), [None] * len(seqs)
        logprobs = logits.float().log_softmax(dim=-1)  # (rows, vocab)
        chosen = logprobs.gather(1, tokens[:, None])[:, 0].tolist()
        tops = [None] * len(seqs)
        for j, seq in enumerate(seqs):
            if seq.top_logprobs is not None:
                top = logprobs[j].topk(min(seq.top_logprobs, logprobs.shape[-1]))
                tops[j] = (top.indices.tolist(), top.values.tolist())
        return chosen, tops

    def _record(self, rows: list[int], seqs: list[Sequence], tokens: list[int]) -> None:
        """Write the running rows' new tokens into the history (one write for all of them)."""
        index = [(i, len(s.prompt) + s.sampled, t) for i, s, t in zip(rows, seqs, tokens)
                 if not s.done and len(s.prompt) + s.sampled < self.max_seq_len]
        if index:
            at = torch.tensor(index, device=self.device)  # (k, 3): row, column, token
            self.history[at[:, 0], at[:, 1]] = at[:, 2]

    def _grow(self) -> None:
        """Give every running row room for the position it writes this step, oldest first; when the cache has no
        block left, preempt the youngest running sequence (which may be the row asking) and try again."""
        if all(s.done or self.cache.reserve(i, self.cached[i] + 1) for i, s in enumerate(self.rows)):
            return
        for seq in sorted((s for s in self.rows if not s.done), key=lambda s: s.arrival):
            while (row := self._row_of(seq)) is not None and not self.cache.reserve(row, self.cached[row] + 1):
                youngest = max((s for s in self.rows if not s.done), key=lambda s: s.arrival)
                self._preempt(self._row_of(youngest))

    def _row_of(self, seq: Sequence) -> int | None:
        return next((i for i, s in enumerate(self.rows) if s is seq), None)

    def _preempt(self, row: int) -> None:
        """Take a running row back: offer its written blocks to the prefix cache, free them, queue its sequence."""
        seq = self.rows[row]
        self.cache.register_prefix(row, self._context(seq)[: self.cached[row]])
        self._remove(row)
        self.preempted.append(seq)
        self.preempted.sort(key=lambda s: s.arrival)
        self.preemptions += 1

    def take_preempted(self) -> list[Sequence]:
        """The sequences preempted since the last call, oldest first (admit them again when they fit)."""
        taken, self.preempted = self.preempted, []
        return taken

    # -- releasing ------------------------------------------------------------------------------------
    def release(self) -> list[Sequence]:
        """Free the rows of finished (or cancelled) sequences, moving the last rows into the holes; return them."""
        freed = []
        for i in reversed(range(len(self.rows))):
            if self.rows[i].done:
                freed.append(self.rows[i])
                self._remove(i)
        return freed

    def _remove(self, i: int) -> None:
        """Free row i's blocks and move the last row into it."""
        self.cache.free_row(i)
        last = len(self.rows) - 1
        if i < last:
            self.calls.move_row(last, i, self.cached[last])
            self.history[i] = self.history[last]
            self.rows[i], self.cached[i], self.fill_to[i] = self.rows[last], self.cached[last], self.fill_to[last]
        self.rows.pop()
        self.cached.pop()
        self.fill_to.pop()
        self._last = None
