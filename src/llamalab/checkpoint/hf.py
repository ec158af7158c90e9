"""Hugging Face Llama checkpoints: config.json + safetensors, a key map and the q/k RoPE-layout permutation.

Meta rotates interleaved feature pairs (x[2i], x[2i+1]); HF rotates half-split pairs (x[i], x[i+d/2]).
The two agree once the rows of wq and wk are permuted within every head.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from llamalab.checkpoint.keys import inverse, rename
from llamalab.checkpoint.mapped import release_pages
from llamalab.checkpoint.vocab import copy_tokenizer_files, special_token_ids
from llamalab.checkpoint.weights import StateDict, load_tensors, progress_bar
from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import CheckpointError, ConfigError
from llamalab.files import read_json, write_json

# Meta name -> HF name; "{i}" is the layer index.
HF_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.feed_forward.w1.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w2.weight": "model.layers.{i}.mlp.down_proj.weight",
    "layers.{i}.feed_forward.w3.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
}
FROM_HF_KEYS = inverse(HF_KEYS)

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def interleaved_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute the rows of a Meta wq/wk (n_heads*hd, dim) to HF's half-split RoPE layout."""
    rows, cols = w.shape
    # (n_heads, hd/2, 2, dim) -> (n_heads, 2, hd/2, dim)
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_split_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of `interleaved_to_half_split`: HF q_proj/k_proj rows back to Meta's interleaved layout."""
    rows, cols = w.shape
    # (n_heads, 2, hd/2, dim) -> (n_heads, hd/2, 2, dim)
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_hf_state_dict(state_dict: StateDict, args: ModelArgs) -> StateDict:
    """Meta-named weights -> HF `LlamaForCausalLM` weights (tied output dropped when tied)."""
    tied_output = {"output.weight"} if args.tie_embeddings else set()
    state = {k: v for k, v in state_dict.items() if k not in tied_output}
    return _translate(state, args, HF_KEYS, interleaved_to_half_split, "the weights")


def from_hf_state_dict(state_dict: StateDict, args: ModelArgs, source: str | Path = "checkpoint") -> StateDict:
    """HF `LlamaForCausalLM` weights -> Meta-named weights (rotary inv_freq buffers ignored)."""
    state = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    out = _translate(state, args, FROM_HF_KEYS, half_split_to_interleaved, source)
    if args.tie_embeddings:
        out.pop("output.weight", None)
    return out


def _translate(state: StateDict, args: ModelArgs, table: dict[str, str], permute, source) -> StateDict:
    """Rename every tensor through `table`, permuting the rows of wq and wk (per query / key-value head)."""
    out = {}
    for key, tensor in state.items():
        new_key = rename(key, table)
        if new_key is None:
            raise CheckpointError(f"{source}: unknown tensor name {key!r} for a Hugging Face Llama checkpoint")
        meta_key = new_key if table is FROM_HF_KEYS else key
        if meta_key.endswith(("attention.wq.weight", "attention.wk.weight")):
            heads = args.n_heads if meta_key.endswith("wq.weight") else args.kv_heads
            tensor, read = permute(tensor, heads), tensor
            if table is FROM_HF_KEYS:
                release_pages(read)  # the file's pages of the rows just permuted into a copy
        out[new_key] = tensor
    return out


def hf_config(args: ModelArgs) -> dict[str, Any]:
    """A transformers `LlamaConfig` dict for these ModelArgs."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "head_dim": args.head_dim,
    }
    if args.rope_scaling is not None:
        s = args.rope_scaling
        config["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
    return config


def args_from_hf_config(config: dict[str, Any]) -> ModelArgs:
    """ModelArgs from a transformers Llama `config.json` dict."""
    try:
        scaling = config.get("rope_scaling") or (config.get("rope_parameters") or None)
        rope_scaling = None
        if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":
            rope_scaling = RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
            )
        rope_theta = config.get("rope_theta") or (scaling or {}).get("rope_theta") or 10000.0
        return ModelArgs(
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=config["num_attention_heads"],
            n_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
            vocab_size=config["vocab_size"],
            hidden_dim=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_seq_len=config.get("max_position_embeddings", 2048),
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except KeyError as e:
        raise CheckpointError(f"config.json lacks the field {e.args[0]!r} of a Llama config") from None
    except (TypeError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"config.json: a field has a wrong type or value ({e})") from None


# -- folders ----------------------------------------------------------------------------------------
def read(folder: Path) -> tuple[ModelArgs, StateDict]:
    """ModelArgs and Meta-named weights of a HF folder (one or many safetensors / pytorch_model.bin files)."""
    config = read_json(folder / "config.json", CheckpointError)
    if config.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{folder / 'config.json'}: model_type {config['model_type']!r} is not a Llama model")
    args = args_from_hf_config(config)
    hf_state = {}
    for file in _weight_files(folder):
        hf_state.update(load_tensors(file))
    return args, from_hf_state_dict(hf_state, args, source=folder)


def write(folder: Path, state: StateDict, args: ModelArgs, dtype: torch.dtype | None = None, shards: int = 1,
          tokenizer: Path | None = None, show_progress: bool = False) -> None:
    """Write config.json, generation_config.json, the weights (sharded with an index when shards > 1), the tokenizer."""
    hf_state = to_hf_state_dict(state, args)
    names = list(hf_state)
    if not 1 <= shards <= len(names):
        raise CheckpointError(f"--shards {shards}: a checkpoint of {len(names)} tensors takes 1 to {len(names)} shards")
    files = [f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    if shards == 1:
        files = [SINGLE_FILES[0]]
    weight_map, total_bytes = {}, 0
    with progress_bar(len(names), show_progress, "writing safetensors") as bar:
        for i, file in enumerate(files):
            group = {}
            for name in names[i * len(names) // shards:(i + 1) * len(names) // shards]:
                group[name] = hf_state[name].to(dtype or hf_state[name].dtype).contiguous()
                weight_map[name] = file
                total_bytes += group[name].nbytes
                bar.update()
            save_file(group, folder / file, metadata={"format": "pt"})
    if shards > 1:
        write_json(folder / INDEX_FILES[0], {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})
    stored = dtype or state["tok_embeddings.weight"].dtype
    ids = special_token_ids(tokenizer) if tokenizer is not None else {}
    write_json(folder / "config.json", {**hf_config(args), **ids, "torch_dtype": str(stored).removeprefix("torch.")})
    write_json(folder / "generation_config.json", ids)
    if tokenizer is not None:
        copy_tokenizer_files(tokenizer, folder)


def _weight_files(folder: Path) -> list[Path]:
    for name in INDEX_FILES:
        if (folder / name).is_file():
            weight_map = read_json(folder / name, CheckpointError).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{folder / name}: no weight_map")
            return [_inside(folder, f, folder / name) for f in sorted(set(map(str, weight_map.values())))]
    for name in SINGLE_FILES:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"{folder}: no {' or '.join(SINGLE_FILES + INDEX_FILES)} beside config.json")


def _inside(folder: Path, name: str, index: Path) -> Path:
    """A weight file the index names, refused unless it lies inside the checkpoint folder."""
    path = folder / name
    if Path(name).is_absolute() or folder.resolve() not in path.resolve().parents:
        raise CheckpointError(f"{index}: the weight file {name!r} lies outside {folder}; the index is corrupt")
    return path
