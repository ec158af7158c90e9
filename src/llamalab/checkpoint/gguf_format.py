"""GGUF, llama.cpp's format: written with the gguf package's GGUFWriter, read back with its GGUFReader.

llama.cpp's `llama` architecture rotates interleaved pairs like Meta (its HF converter undoes HF's q/k
permutation), so Meta's wq/wk are stored as they are. Tensors are streamed one at a time; norms stay F32.
Reading can keep Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K tensors quantized (see
checkpoint/gguf_blocks.py); every other type gguf dequantizes is converted tensor by tensor to the requested dtype.
Llama 3.1 RoPE scaling is the `rope_freqs` tensor of per-frequency divisors that llama.cpp applies; its
parameters are also kept under `llamalab.rope_scaling.*` so that they read back exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML

from llamalab.checkpoint.gguf_blocks import KEPT_TYPES, kept_quantized, read_raw
from llamalab.checkpoint.gguf_header import TensorInfo, read_header
from llamalab.checkpoint.keys import inverse, rename
from llamalab.checkpoint.vocab import vocabulary
from llamalab.checkpoint.weights import StateDict, progress_bar
from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import CheckpointError, ConfigError
from llamalab.model import rope_frequencies

# Meta name -> llama.cpp name; "{i}" is the layer index.
GGUF_KEYS = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
    "layers.{i}.attention.wq.weight": "blk.{i}.attn_q.weight",
    "layers.{i}.attention.wk.weight": "blk.{i}.attn_k.weight",
    "layers.{i}.attention.wv.weight": "blk.{i}.attn_v.weight",
    "layers.{i}.attention.wo.weight": "blk.{i}.attn_output.weight",
    "layers.{i}.feed_forward.w1.weight": "blk.{i}.ffn_gate.weight",
    "layers.{i}.feed_forward.w2.weight": "blk.{i}.ffn_down.weight",
    "layers.{i}.feed_forward.w3.weight": "blk.{i}.ffn_up.weight",
    "layers.{i}.attention_norm.weight": "blk.{i}.attn_norm.weight",
    "layers.{i}.ffn_norm.weight": "blk.{i}.ffn_norm.weight",
}
FROM_GGUF_KEYS = inverse(GGUF_KEYS)
ROPE_FREQS = "rope_freqs.weight"
SCALING_KEY = "llamalab.rope_scaling.{}"

GGML_TYPES = {torch.float32: GGML.F32, torch.float16: GGML.F16, torch.bfloat16: GGML.BF16, "q8_0": GGML.Q8_0,
              "q4_0": GGML.Q4_0, "q4_1": GGML.Q4_1, "q5_0": GGML.Q5_0, "q5_1": GGML.Q5_1}
LOW_BIT_TYPES = (GGML.Q4_0, GGML.Q4_1, GGML.Q5_0, GGML.Q5_1)
FILE_TYPES = {GGML.F32: gguf.LlamaFileType.ALL_F32, GGML.F16: gguf.LlamaFileType.MOSTLY_F16,
              GGML.BF16: gguf.LlamaFileType.MOSTLY_BF16, GGML.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
              GGML.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, GGML.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
              GGML.Q5_0: gguf.LlamaFileType.MOSTLY_Q5_0, GGML.Q5_1: gguf.LlamaFileType.MOSTLY_Q5_1}


def rope_freq_factors(args: ModelArgs) -> torch.Tensor:
    """llama.cpp's rope_freqs: the divisor of each RoPE frequency under Llama 3.1 scaling, (head_dim/2,) float32."""
    unscaled = rope_frequencies(args.head_dim, args.rope_theta)
    return unscaled / rope_frequencies(args.head_dim, args.rope_theta, args.rope_scaling)


# -- writing ----------------------------------------------------------------------------------------
def write(path: Path, state: StateDict, args: ModelArgs, dtype: torch.dtype | str | None = None,
          tokenizer: Path | None = None, show_progress: bool = False) -> None:
    """A GGUF file of arch `llama`: hyper-parameters, the vocabulary (when a tokenizer is given), the tensors."""
    dtype = dtype or state["tok_embeddings.weight"].dtype
    if dtype not in GGML_TYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in GGML_TYPES)
        raise CheckpointError(f"GGUF is written as {names}, not {dtype}")
    main_type = GGML_TYPES[dtype]
    tensors = {rename(name, GGUF_KEYS): (tensor, _tensor_type(name, tensor, main_type))
               for name, tensor in state.items()}
    if args.rope_scaling is not None:
        tensors[ROPE_FREQS] = (rope_freq_factors(args), GGML.F32)

    writer = gguf.GGUFWriter(path, "llama")
    _add_hyperparameters(writer, args, main_type)
    if tokenizer is not None:
        _add_vocabulary(writer, tokenizer)
    for name, (tensor, ggml_type) in tensors.items():
        block, type_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
        nbytes = tensor.numel() * type_bytes // block
        writer.add_tensor_info(name, tuple(tensor.shape), np.dtype(np.float32), nbytes, ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with progress_bar(len(tensors), show_progress, "writing gguf") as bar:
        for tensor, ggml_type in tensors.values():
            writer.write_tensor_data(gguf.quants.quantize(tensor.float().numpy(), ggml_type))
            bar.update()
    writer.close()


def _tensor_type(name: str, tensor: torch.Tensor, main_type: GGML) -> GGML:
    """Norms (1-D) stay F32 as llama.cpp wants; under 4- and 5-bit types the embedding and the output head are Q8_0
    (llama.cpp too keeps them at higher precision); a matrix whose rows do not fill the type's blocks falls back to
    F16."""
    if tensor.dim() == 1:
        return GGML.F32
    if name in ("tok_embeddings.weight", "output.weight") and main_type in LOW_BIT_TYPES:
        main_type = GGML.Q8_0
    block, _ = gguf.GGML_QUANT_SIZES[main_type]
    return main_type if tensor.shape[-1] % block == 0 else GGML.F16


def _add_hyperparameters(writer: gguf.GGUFWriter, args: ModelArgs, main_type: GGML) -> None:
    writer.add_name("llamalab")
    writer.add_file_type(FILE_TYPES[main_type])
    if main_type not in (GGML.F32, GGML.F16):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(args.vocab_size)
    writer.add_context_length(args.max_seq_len)
    writer.add_embedding_length(args.dim)
    writer.add_block_count(args.n_layers)
    writer.add_feed_forward_length(args.ffn_hidden_dim)
    writer.add_head_count(args.n_heads)
    writer.add_head_count_kv(args.kv_heads)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_rope_freq_base(args.rope_theta)
    writer.add_layer_norm_rms_eps(args.norm_eps)
    if args.rope_scaling is not None:
        for field, value in vars(args.rope_scaling).items():
            writer.add_float64(SCALING_KEY.format(field), float(value))


def _add_vocabulary(writer: gguf.GGUFWriter, tokenizer: Path) -> None:
    """The vocabulary as llama.cpp's `llama` (SentencePiece) or `gpt2` (byte-level BPE) tokenizer, its special ids,
    add_bos / add_eos and the chat template."""
    vocab = vocabulary(tokenizer)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_scores(vocab.scores)  # both add_* skip an empty list
    writer.add_token_merges(vocab.merges)
    for add, token_id in ((writer.add_bos_token_id, vocab.bos_id), (writer.add_eos_token_id, vocab.eos_id),
                          (writer.add_unk_token_id, vocab.unk_id), (writer.add_pad_token_id, vocab.pad_id),
                          (writer.add_eot_token_id, vocab.eot_id)):
        if token_id is not None and token_id >= 0:
            add(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# -- reading ----------------------------------------------------------------------------------------
def read(path: Path, dtype: torch.dtype | None = None, keep_quantized: bool = False) -> tuple[ModelArgs, StateDict]:
    """ModelArgs and weights of a llama GGUF.

    F32/F16/BF16 tensors are memory-mapped. keep_quantized: Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K / Q5_K / Q6_K
    matrices become QuantizedWeight (exactly the values gguf dequantizes them to; the mapped blocks themselves unless
    Q4_0 / Q4_1 compute in bfloat16 / float16). Every other quantized type is dequantized, one tensor at a time, to
    `dtype` (None: float32).
    """
    metadata, tensors = read_header(path)
    arch = _field(metadata, path, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: GGUF architecture {arch!r}; llamalab reads 'llama'")
    mapped = np.memmap(path, dtype=np.uint8, mode="c")  # copy-on-write: writable arrays without reading the file
    state, rope_freqs = {}, None
    with open(path, "rb") as file:
        for t in tensors:
            if t.name == ROPE_FREQS:
                rope_freqs = torch.from_numpy(_mapped(mapped, t))
                continue
            key = rename(t.name, FROM_GGUF_KEYS)
            if key is None:
                raise CheckpointError(f"{path}: unknown tensor name {t.name!r} in a llama GGUF")
            state[key] = _tensor(file, mapped, t, path, dtype, keep_quantized)
    args = _args(metadata, path, state)
    if rope_freqs is not None and args.rope_scaling is None:
        args = args.replace(rope_scaling=_scaling_from_factors(rope_freqs, args, path))
    return args, state


def _tensor(file, mapped: np.memmap, t: TensorInfo, path: Path, dtype: torch.dtype | None, keep_quantized: bool):
    """One tensor of the file: memory-mapped float, a QuantizedWeight, or dequantized to dtype."""
    if t.tensor_type in (GGML.F32, GGML.F16, GGML.BF16):
        values = torch.from_numpy(_mapped(mapped, t))
        return values.view(torch.bfloat16) if t.tensor_type == GGML.BF16 else values
    if keep_quantized and t.tensor_type in KEPT_TYPES and len(t.shape) == 2:
        return kept_quantized(file, mapped, t, dtype)
    raw = read_raw(file, t)  # a transient copy: the mapped pages of the file are never touched
    try:
        values = gguf.quants.dequantize(raw, t.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which llamalab cannot read; "
                              "re-quantize the model with a common type (e.g. Q8_0, Q4_K_M)") from None
    return torch.from_numpy(values).to(dtype or torch.float32)


def _mapped(mapped: np.memmap, t: TensorInfo) -> np.ndarray:
    """A float tensor's values as a view of the mapped file (bfloat16 as int16, reinterpreted by the caller)."""
    dtypes = {GGML.F32: np.float32, GGML.F16: np.float16, GGML.BF16: np.int16}
    return mapped[t.offset:t.offset + t.n_bytes].view(dtypes[t.tensor_type]).reshape(t.shape)


def _args(metadata: dict, path: Path, state: StateDict) -> ModelArgs:
    def llama(key, default=None):
        return _field(metadata, path, f"llama.{key}", default)

    embedding = state.get("tok_embeddings.weight")
    try:
        return ModelArgs(
            dim=llama("embedding_length"), n_layers=llama("block_count"), n_heads=llama("attention.head_count"),
            n_kv_heads=llama("attention.head_count_kv", llama("attention.head_count")),
            vocab_size=llama("vocab_size", embedding.shape[0] if embedding is not None else None),
            hidden_dim=llama("feed_forward_length"), norm_eps=_shortest(llama("attention.layer_norm_rms_epsilon")),
            rope_theta=_shortest(llama("rope.freq_base", 10000.0)), max_seq_len=llama("context_length", 2048),
            rope_scaling=_stored_scaling(metadata, path),
            tie_embeddings="output.weight" not in state,
        )
    except (ConfigError, TypeError, ValueError) as e:  # metadata of the wrong type: a string where a number goes
        raise CheckpointError(f"{path}: {e}") from None


def _stored_scaling(metadata: dict, path: Path) -> RopeScaling | None:
    """Llama 3.1 scaling from our llamalab.rope_scaling.* keys, when the file has them."""
    defaults = vars(RopeScaling())
    values = {name: _field(metadata, path, SCALING_KEY.format(name), None) for name in defaults}
    if None in values.values():
        return None
    return RopeScaling(**{name: type(defaults[name])(value) for name, value in values.items()})


def _shortest(value: float) -> float:
    """The shortest decimal that rounds to this float32 (GGUF stores eps and theta as float32: 1e-5, not 9.99e-6)."""
    if not isinstance(value, (int, float, np.number)) or isinstance(value, bool):
        raise TypeError(f"expected a number in the GGUF metadata, found {value!r}")
    return float(str(np.float32(value)))


def _field(metadata: dict, path: Path, key: str, default=...):
    value = metadata.get(key)
    if value is None:
        if default is ...:
            raise CheckpointError(f"{path}: GGUF metadata lacks {key!r}")
        return default
    return value


def _scaling_from_factors(factors: torch.Tensor, args: ModelArgs, path: Path) -> RopeScaling:
    """Recover Llama 3.1 scaling from llama.cpp's rope_freqs divisors (low_freq_factor taken as Meta's 1).

    In the blended band 1/divisor = (1-s)/factor + s with s = original_len/(wavelength·(high-low)) - low/(high-low),
    a straight line in frequency; two blended frequencies give its slope and intercept.
    """
    freqs = rope_frequencies(args.head_dim, args.rope_theta).double()
    factors = factors.double()
    factor = factors.max().item()
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)
    band = ((smooth > 1e-4) & (smooth < 1 - 1e-4)).nonzero().flatten()
    if factor <= 1 or len(band) < 2:
        raise CheckpointError(f"{path}: rope_freqs does not determine Llama 3.1 scaling; "
                              "convert from the HF or Meta release instead")
    x, y = freqs[band] / (2 * math.pi), smooth[band]
    slope = ((y[-1] - y[0]) / (x[-1] - x[0])).item()
    intercept = (y[0] - slope * x[0]).item()  # = -low/(high-low)
    high = 1 - 1 / intercept
    scaling = RopeScaling(factor=round(factor, 4), low_freq_factor=1.0, high_freq_factor=round(high, 4),
                          original_max_position_embeddings=round(slope * (high - 1)))
    if not torch.allclose(rope_freq_factors(args.replace(rope_scaling=scaling)).double(), factors, rtol=1e-3):
        raise CheckpointError(f"{path}: rope_freqs is not a Llama 3.1 scaling llamalab can represent")
    return scaling
