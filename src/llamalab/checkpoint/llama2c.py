"""llama2.c's .bin checkpoints and tokenizer.bin, in the layouts of its export.py / run.c / runq.c.

- legacy (version 0, what run.c reads): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
  vocab_size, max_seq_len; a negative vocab_size means an unshared classifier), then float32 weights
  in LEGACY_ORDER, including the RoPE cos/sin tables.
- version 1: a 256-byte header (magic "ak42", version, the 7 ints, a shared-classifier byte), float32 in ORDER.
- version 2 (what runq.c reads): the same header plus the group size; the norms in float32, then every
  matrix as int8 values followed by one float32 scale per group (symmetric Q8_0).
run.c hard-codes RoPE theta 10000 and RMSNorm eps 1e-5, so other models are refused rather than written wrongly.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from llamalab.checkpoint.plausible import check_fits_file
from llamalab.checkpoint.vocab import vocabulary
from llamalab.checkpoint.weights import StateDict, expected_shapes, progress_bar
from llamalab.config import ModelArgs
from llamalab.errors import CheckpointError, ConfigError
from llamalab.model import rope_tables

MAGIC = 0x616B3432  # "ak42" as a little-endian uint32
HEADER_BYTES = 256  # versions 1 and 2
LEGACY_HEADER = struct.Struct("<7i")
RUN_C_ROPE_THETA, RUN_C_NORM_EPS = 10000.0, 1e-5

_LAYER_MATRICES = (
    "layers.{i}.attention.wq.weight", "layers.{i}.attention.wk.weight", "layers.{i}.attention.wv.weight",
    "layers.{i}.attention.wo.weight", "layers.{i}.feed_forward.w1.weight", "layers.{i}.feed_forward.w2.weight",
    "layers.{i}.feed_forward.w3.weight",
)
LEGACY_ORDER = (
    "tok_embeddings.weight", "layers.{i}.attention_norm.weight", *_LAYER_MATRICES[:4],
    "layers.{i}.ffn_norm.weight", *_LAYER_MATRICES[4:], "norm.weight",
    "freq_cis_real", "freq_cis_imag", "output.weight",
)
ORDER = (
    "layers.{i}.attention_norm.weight", "layers.{i}.ffn_norm.weight", "norm.weight",
    "tok_embeddings.weight", *_LAYER_MATRICES, "output.weight",
)


def layout(args: ModelArgs, version: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor in file order; the output head only when unshared."""
    shapes = expected_shapes(args)
    half = args.head_dim // 2
    shapes["freq_cis_real"] = shapes["freq_cis_imag"] = (args.max_seq_len, half)
    order = LEGACY_ORDER if version == 0 else ORDER
    names = [n.format(i=i) for n in order for i in (range(args.n_layers) if "{i}" in n else [0])]
    return [(n, shapes[n]) for n in names if n in shapes]


def group_size(args: ModelArgs) -> int:
    """The Q8_0 group: 64, halved until it divides the rows of every matrix (dim and the FFN size)."""
    size = 64
    while args.dim % size or args.ffn_hidden_dim % size:
        size //= 2
    return size


def quantize_q80(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 in [-127, 127] per group of `group` values: w ≈ q * scale."""
    groups = w.float().reshape(-1, group)  # (n_groups, group)
    scale = groups.abs().amax(dim=1) / 127.0
    q = torch.round(groups / torch.where(scale > 0, scale, 1.0)[:, None]).to(torch.int8)
    return q, scale


def dequantize_q80(q: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return (q.float().view(scale.numel(), -1) * scale[:, None]).view(shape)  # (n_groups, group) -> shape


# -- reading ----------------------------------------------------------------------------------------
def read(path: Path) -> tuple[ModelArgs, StateDict]:
    """ModelArgs and weights of a llama2.c .bin of any version (float32 memory-mapped; Q8_0 dequantized)."""
    version, fields, shared, group, offset = _read_header(path)
    if min(fields) <= 0 or fields[0] * fields[2] > path.stat().st_size:  # each layer holds at least dim floats
        raise CheckpointError(f"{path}: header {fields} does not describe a model of this file's size; "
                              "not a llama2.c checkpoint")
    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, max_seq_len = fields
    try:
        args = ModelArgs(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         vocab_size=vocab_size, max_seq_len=max_seq_len, tie_embeddings=shared,
                         rope_theta=RUN_C_ROPE_THETA, norm_eps=RUN_C_NORM_EPS)
    except ConfigError as e:
        raise CheckpointError(f"{path}: the header {fields} is not a model ({e}); not a llama2.c checkpoint?") from None
    rope_bytes = 4 * args.max_seq_len * args.head_dim if version == 0 else 0  # the legacy layout's cos/sin tables
    check_fits_file(args, path.stat().st_size - offset, 1 if version == 2 else 4, rope_bytes, path)
    entries = layout(args, version)  # builds a meta-device model of the header's shape: only once it fits the file
    quantized = version == 2
    sizes = [_nbytes(name, shape, group if quantized else 0) for name, shape in entries]
    expected, actual = offset + sum(sizes), path.stat().st_size
    if expected != actual:
        raise CheckpointError(f"{path}: {actual} bytes, but its version-{version} header ({_describe(args)}) "
                              f"implies {expected}; the file is truncated or not this format")
    data = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable arrays without reading the file
    state = {}
    for (name, shape), size in zip(entries, sizes):
        chunk = data[offset:offset + size]
        offset += size
        if name.startswith("freq_cis"):
            continue
        if quantized and len(shape) == 2:
            n = int(np.prod(shape))
            q = torch.from_numpy(np.array(chunk[:n]).view(np.int8))
            scale = torch.from_numpy(np.array(chunk[n:]).view(np.float32))
            state[name] = dequantize_q80(q, scale, shape)
        else:
            state[name] = torch.from_numpy(chunk.view(np.float32).reshape(shape))
    return args, state


def _read_header(path: Path) -> tuple[int, tuple[int, ...], bool, int, int]:
    """(version, the 7 ints, shared classifier, Q8_0 group size, offset of the first weight)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    if len(head) < LEGACY_HEADER.size:
        raise CheckpointError(f"{path}: {len(head)} bytes is too short for a llama2.c header; the file is truncated")
    if struct.unpack_from("<I", head)[0] != MAGIC:  # legacy: the sign of vocab_size says whether the head is shared
        fields = LEGACY_HEADER.unpack_from(head)
        return 0, (*fields[:5], abs(fields[5]), fields[6]), fields[5] > 0, 0, LEGACY_HEADER.size
    if len(head) < HEADER_BYTES:
        raise CheckpointError(f"{path}: the 256-byte header is cut short; the file is truncated")
    (version,) = struct.unpack_from("<i", head, 4)
    if version not in (1, 2):
        raise CheckpointError(f"{path}: llama2.c version {version}; llamalab reads legacy files and versions 1 and 2")
    fields = LEGACY_HEADER.unpack_from(head, 8)
    shared = bool(head[8 + LEGACY_HEADER.size])
    group = struct.unpack_from("<i", head, 9 + LEGACY_HEADER.size)[0] if version == 2 else 0
    if version == 2 and group <= 0:
        raise CheckpointError(f"{path}: Q8_0 group size {group} must be positive")
    return version, fields, shared, group, HEADER_BYTES


def _nbytes(name: str, shape: tuple[int, ...], group: int) -> int:
    n = int(np.prod(shape))
    if group and len(shape) == 2 and not name.startswith("freq_cis"):
        return n + 4 * (n // group)  # int8 values, then one float32 scale per group
    return 4 * n


# -- writing ----------------------------------------------------------------------------------------
def write(path: Path, state: StateDict, args: ModelArgs, dtype: torch.dtype | str | None = None,
          version: int | None = None, show_progress: bool = False) -> None:
    """Write the legacy format (float32; run.c), version 1 (float32) or version 2 (dtype "q8_0"; runq.c)."""
    version = (2 if dtype == "q8_0" else 0) if version is None else version
    if version not in (0, 1, 2):
        raise CheckpointError(f"llama2.c version {version}: choose 0 (legacy, run.c), 1 (float32) or 2 (Q8_0, runq.c)")
    if dtype not in (None, torch.float32, "q8_0") or (dtype == "q8_0") != (version == 2):
        raise CheckpointError(f"llama2.c version {version} stores {'q8_0' if version == 2 else 'float32'}, not {dtype}")
    _check_run_c_can_run(args)
    group = group_size(args) if version == 2 else 0
    fields = (args.dim, args.ffn_hidden_dim, args.n_layers, args.n_heads, args.kv_heads, args.vocab_size,
              args.max_seq_len)
    cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
    tensors = {**state, "freq_cis_real": cos, "freq_cis_imag": sin}
    entries = layout(args, version)
    with open(path, "wb") as f, progress_bar(len(entries), show_progress, f"writing llama2.c v{version}") as bar:
        if version == 0:
            f.write(LEGACY_HEADER.pack(*fields[:5], args.vocab_size * (1 if args.tie_embeddings else -1), fields[6]))
        else:
            f.write(struct.pack("<Ii", MAGIC, version) + LEGACY_HEADER.pack(*fields))
            f.write(struct.pack("<B", args.tie_embeddings))
            if version == 2:
                f.write(struct.pack("<i", group))
            f.write(b"\0" * (HEADER_BYTES - f.tell()))
        for name, _ in entries:
            tensor = tensors[name]
            if group and tensor.dim() == 2:
                q, scale = quantize_q80(tensor, group)
                q.numpy().tofile(f)
                scale.numpy().tofile(f)
            else:
                tensor.to(torch.float32).contiguous().numpy().tofile(f)
            bar.update()


def _check_run_c_can_run(args: ModelArgs) -> None:
    problems = []
    if args.rope_theta != RUN_C_ROPE_THETA:
        problems.append(f"rope_theta={args.rope_theta:g} (run.c uses {RUN_C_ROPE_THETA:g})")
    if args.rope_scaling is not None:
        problems.append("Llama 3.1 rope_scaling (run.c has none)")
    if args.norm_eps != RUN_C_NORM_EPS:
        problems.append(f"norm_eps={args.norm_eps:g} (run.c uses {RUN_C_NORM_EPS:g})")
    if problems:
        raise CheckpointError(f"llama2.c's format cannot hold {', '.join(problems)}; "
                              "convert to gguf, hf or meta instead")


def _describe(args: ModelArgs) -> str:
    return f"dim={args.dim}, hidden={args.ffn_hidden_dim}, layers={args.n_layers}, vocab={args.vocab_size}"


# -- tokenizer.bin ----------------------------------------------------------------------------------
def write_tokenizer_bin(tokenizer_model: Path, path: Path) -> None:
    """llama2.c's tokenizer.bin of a SentencePiece model: max token length, then per token its score, length, bytes."""
    vocab = vocabulary(tokenizer_model)
    if vocab.model != "llama":
        raise CheckpointError(f"{tokenizer_model}: llama2.c's tokenizer.bin holds a SentencePiece vocabulary, "
                              "not byte-level BPE")
    special = {vocab.bos_id: "\n<s>\n", vocab.eos_id: "\n</s>\n"}  # as llama2.c's tokenizer.py writes them
    tokens = [special.get(i, piece).replace("\u2581", " ").encode("utf-8") for i, piece in enumerate(vocab.tokens)]
    with open(path, "wb") as f:
        f.write(struct.pack("<I", max(len(t) for t in tokens)))
        for token, score in zip(tokens, vocab.scores):
            f.write(struct.pack("<fI", score, len(token)) + token)
