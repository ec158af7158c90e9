"""Chat and instruction data: JSONL dialogs rendered with the model's chat template, loss on the assistant's tokens.

A line is either OpenAI-style `{"messages": [{"role": ..., "content": ...}, ...]}` or Alpaca-style
`{"instruction": ..., "input": ..., "output": ...}` (a user message, then the answer). Each dialog is
rendered with the tokenizer's own chat template; the text each assistant message adds (its content and
the end-of-turn token the template closes it with) is trained, everything else (system prompt, user
turns, role headers) gets the label -100, which the loss skips.

Examples are padded, not packed: the attention is causal over a whole row, so packed examples would
attend to each other unless it took a block-diagonal mask and per-example positions. Rows are padded to
the longest example of the global batch (chat examples are short; the padding is masked out of the loss).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llamalab.errors import ChatFormatError, DataError
from llamalab.tokenizer import Tokenizer, load_tokenizer, render_chat_template

IGNORE_INDEX = -100  # label of a token the loss skips (F.cross_entropy's and the model's default)
ROLES = ("system", "user", "assistant")


@dataclass
class ChatExample:
    """A rendered dialog: its token ids and, per position, the id to learn there or IGNORE_INDEX."""

    ids: list[int]
    labels: list[int]


def is_chat_file(path: str | Path) -> bool:
    """Whether `--data` names a chat / instruction JSONL file rather than a prepared token folder."""
    return Path(path).suffix == ".jsonl" and Path(path).is_file()


def read_dialogs(path: str | Path) -> list[list[dict[str, str]]]:
    """The dialogs of a JSONL file (`messages` or Alpaca records); a malformed line is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    dialogs = []
    for line_no, line in enumerate(lines, 1):
        if line.strip():
            dialogs.append(_dialog(line, f"{path}:{line_no}"))
    if not dialogs:
        raise DataError(f"{path} holds no examples; write one JSON object per line")
    return dialogs


def _dialog(line: str, where: str) -> list[dict[str, str]]:
    """The messages of one JSONL line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with `messages` or `instruction`/`output`")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: `messages` must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: message {i} must be an object with a role ({', '.join(ROLES)}) and a "
                                f"string content, got {json.dumps(m)[:80]}")
        if not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{where}: no assistant message, so nothing to learn from this dialog")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in record:
        fields = {k: record.get(k, "") for k in ("instruction", "input", "output")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad or not fields["output"]:
            raise DataError(f"{where}: an Alpaca record needs string `instruction` and `output` (and optional "
                            f"`input`); {'bad ' + ', '.join(bad) if bad else 'the output is empty'}")
        prompt = fields["instruction"] + (f"\n\n{fields['input']}" if fields["input"] else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}]
    raise DataError(f"{where}: expected a `messages` list or Alpaca `instruction`/`input`/`output` fields, "
                    f"got keys {sorted(record)}")


def render_example(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> ChatExample:
    """The dialog's ids in the tokenizer's chat template, labels only on what the assistant messages add.

    The text is cut where each assistant turn starts (the dialog so far rendered with the generation
    prompt, as at inference) and ends (rendered through that message); the pieces are encoded one by one,
    so an answer's tokens are those the model produces after the generation prompt.
    """
    if not tokenizer.chat_template:
        raise DataError("the model's tokenizer has no chat template, so chat data cannot be rendered; use a model "
                        "whose tokenizer ships one (tokenizer_config.json / chat_template.jinja)")
    template = tokenizer.chat_template
    try:
        full = render_chat_template(template, messages, tokenizer, add_generation_prompt=False)
        cuts = [0]  # character offsets: prompt, answer, prompt, answer, ...
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = render_chat_template(template, messages[:i], tokenizer) if i else ""
            through = render_chat_template(template, messages[: i + 1], tokenizer, add_generation_prompt=False)
            start, end = len(prompt), len(through)
            if not (cuts[-1] <= start <= end and full.startswith(through) and through.startswith(prompt)):
                raise DataError("the chat template does not render a dialog's start as a prefix of the whole "
                                "dialog; its assistant turns cannot be located")
            cuts += [start, end]
    except ChatFormatError as e:
        raise DataError(str(e)) from None
    cuts.append(len(full))
    ids, labels = [], []
    for k in range(len(cuts) - 1):
        piece = tokenizer.encode(full[cuts[k]: cuts[k + 1]], bos=False, allow_special=True)
        ids += piece
        labels += piece if k % 2 else [IGNORE_INDEX] * len(piece)  # odd pieces are answers
    return ChatExample(ids, labels)


class ChatData:
    """A chat JSONL file rendered with a tokenizer: train and validation examples, at most seq_len + 1 tokens each."""

    def __init__(self, path: str | Path, tokenizer_path: str | Path, seq_len: int, val_path: str | Path | None = None,
                 val_fraction: float = 0.05):
        self.folder = Path(path)
        self.tokenizer_path = Path(tokenizer_path)
        tokenizer = load_tokenizer(tokenizer_path)
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.pad_id = next((i for i in (tokenizer.pad_id, tokenizer.eos_id) if i is not None), 0)
        examples = [self._fit(render_example(tokenizer, d), seq_len) for d in read_dialogs(path)]
        if val_path:
            val = [self._fit(render_example(tokenizer, d), seq_len) for d in read_dialogs(val_path)]
        else:
            n_val = max(1, round(len(examples) * val_fraction)) if len(examples) > 1 else 0
            examples, val = examples[: len(examples) - n_val], examples[len(examples) - n_val:] or examples
        self.splits = {"train": [e for e in examples if e is not None], "val": [e for e in val if e is not None]}
        if not self.splits["train"]:
            raise DataError(f"no example of {path} has an answer within the first {seq_len} tokens; "
                            "raise --seq-len")

    @staticmethod
    def _fit(example: ChatExample, seq_len: int) -> ChatExample | None:
        """The example cut to seq_len + 1 tokens (inputs and shifted targets); None when no answer token is left."""
        ids, labels = example.ids[: seq_len + 1], example.labels[: seq_len + 1]
        return ChatExample(ids, labels) if any(x != IGNORE_INDEX for x in labels[1:]) else None

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of the examples at `indices`, each (len(indices), longest - 1); padding's targets -100."""
        return pad_batch([self.splits[split][i] for i in indices], self.pad_id)


def pad_batch(examples: list[ChatExample], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (ids[:-1]) and targets (labels[1:]) of each example, right-padded to `length` (default: the longest)."""
    length = length or max(len(e.ids) for e in examples) - 1
    inputs = torch.full((len(examples), length), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.ids) - 1
        inputs[row, :n] = torch.tensor(e.ids[:-1])
        targets[row, :n] = torch.tensor(e.labels[1:])
    return inputs, targets


class ChatBatches:
    """Global batches of shuffled examples, each process its rows, padded to the global batch's longest example.

    As `data.Batches`: the order is a pure function of (seed, epoch); the state is (epoch, index), so a
    checkpoint resumes at the same example; an epoch's leftover examples are skipped.
    """

    def __init__(self, data: ChatData, global_batch: int, seed: int, rank: int = 0, world: int = 1):
        self.data, self.global_batch, self.seed, self.rank, self.world = data, global_batch, seed, rank, world
        self.n = len(data.splits["train"])
        if self.n < global_batch:
            raise DataError(f"a global batch of {global_batch} examples needs at least that many training examples, "
                            f"{data.folder} has {self.n}; lower --batch-size / --grad-accum or add examples")
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's rows of the next global batch: (inputs, targets), each (global_batch / world, length)."""
        if self.index + self.global_batch > self.n:
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._permutation()
        rows = self._order[self.index: self.index + self.global_batch]
        examples = [self.data.splits["train"][i] for i in rows]
        length = max(len(e.ids) for e in examples) - 1  # the same on every process
        per_rank = self.global_batch // self.world
        self.index += self.global_batch
        return pad_batch(examples[self.rank * per_rank: (self.rank + 1) * per_rank], self.data.pad_id, length)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation()
