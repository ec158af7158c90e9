"""Meta's checkpoints: a folder with params.json and consolidated.NN.pth, one file per model-parallel rank.

Meta's model-parallel layers split each weight along one dimension: column-parallel ones (wq, wk, wv,
w1, w3, output) on their output rows (dim 0), row-parallel ones (wo, w2) on their input columns (dim 1),
the token embedding on its features (dim 1); norms are replicated. Merging N shards and slicing the
merged weights for a rank of another tensor-parallel size are the same operation, `rank_slice`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from llamalab.checkpoint.keys import template
from llamalab.checkpoint.vocab import copy_tokenizer_files
from llamalab.checkpoint.weights import StateDict, load_tensors, progress_bar
from llamalab.config import ModelArgs, RopeScaling
from llamalab.errors import CheckpointError, ConfigError
from llamalab.files import read_json, write_json

# The dimension each weight is split along across model-parallel ranks (None: every rank holds all of it).
PARALLEL_DIM = {
    "tok_embeddings.weight": 1,
    "output.weight": 0,
    "norm.weight": None,
    "layers.{i}.attention.wq.weight": 0,
    "layers.{i}.attention.wk.weight": 0,
    "layers.{i}.attention.wv.weight": 0,
    "layers.{i}.attention.wo.weight": 1,
    "layers.{i}.feed_forward.w1.weight": 0,
    "layers.{i}.feed_forward.w3.weight": 0,
    "layers.{i}.feed_forward.w2.weight": 1,
    "layers.{i}.attention_norm.weight": None,
    "layers.{i}.ffn_norm.weight": None,
}
IGNORED = {"rope.freqs"}  # Llama 2 checkpoints carry their RoPE frequencies; the model computes its own
LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)  # what params.json's use_scaled_rope means


def parallel_dim(key: str, source: str | Path = "checkpoint") -> int | None:
    pattern, _ = template(key)
    if pattern not in PARALLEL_DIM:
        raise CheckpointError(f"{source}: unknown tensor name {key!r} in a Meta checkpoint")
    return PARALLEL_DIM[pattern]


def rank_slice(pieces: list[torch.Tensor], dim: int | None, rank: int, world: int) -> torch.Tensor:
    """Rank `rank` of `world` equal parts of cat(pieces, dim), reading only the pieces that overlap it."""
    if dim is None:
        return pieces[0]
    total = sum(p.shape[dim] for p in pieces)
    if total % world:
        raise CheckpointError(f"a weight of {total} along dim {dim} does not split into {world} equal parts")
    start, stop = rank * total // world, (rank + 1) * total // world
    parts, offset = [], 0
    for piece in pieces:
        lo, hi = max(start, offset), min(stop, offset + piece.shape[dim])
        if lo < hi:
            parts.append(piece.narrow(dim, lo - offset, hi - lo))
        offset += piece.shape[dim]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def rank_state_dict(shards: list[StateDict], tp_rank: int = 0, tp_size: int = 1,
                    source: str | Path = "checkpoint") -> StateDict:
    """The weights of tensor-parallel rank tp_rank of tp_size, from Meta's shards (tp_size=1: the merged model)."""
    names = [k for k in shards[0] if k not in IGNORED]
    for i, shard in enumerate(shards[1:], 1):
        if set(shard) - IGNORED != set(names):
            raise CheckpointError(f"{source}: shard {i} holds other tensor names than shard 0")
    return {k: rank_slice([s[k] for s in shards], parallel_dim(k, source), tp_rank, tp_size) for k in names}


def read(folder: Path, tp_rank: int = 0, tp_size: int = 1) -> tuple[ModelArgs, StateDict]:
    """ModelArgs and weights of a Meta folder: merged (default), or one tensor-parallel rank's slices."""
    params = read_json(folder / "params.json", CheckpointError)
    files = shard_files(folder)
    shards = [load_tensors(f) for f in files]
    args = args_from_params(params, shards[0], folder / "params.json")
    if args.n_heads % tp_size or args.kv_heads % tp_size:
        raise CheckpointError(f"tensor-parallel size {tp_size} must divide n_heads={args.n_heads} "
                              f"and n_kv_heads={args.kv_heads}")
    return args, rank_state_dict(shards, tp_rank, tp_size, folder)


def shard_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("consolidated.*.pth"))
    if not files:
        raise CheckpointError(f"{folder}: no consolidated.00.pth beside params.json")
    expected = [folder / f"consolidated.{i:02d}.pth" for i in range(len(files))]
    if files != expected:
        raise CheckpointError(f"{folder}: shards must be consolidated.00.pth .. consolidated.{len(files) - 1:02d}.pth, "
                              f"found {[f.name for f in files]}")
    return files


def args_from_params(params: dict, shard0: StateDict, source: Path) -> ModelArgs:
    """ModelArgs from Meta's params.json (vocab_size -1: read from the embedding; tied: no output.weight)."""
    if params.get("quantization_args"):
        raise CheckpointError(f"{source}: quantized Meta checkpoints are not supported; use the bf16 release")
    try:
        vocab_size = params.get("vocab_size", -1)
        if vocab_size <= 0 and "tok_embeddings.weight" in shard0:
            vocab_size = shard0["tok_embeddings.weight"].shape[0]
        scaling = None
        if params.get("use_scaled_rope"):
            scaling = RopeScaling(**params["rope_scaling"]) if "rope_scaling" in params else LLAMA31_SCALING
        return ModelArgs(
            dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"],
            n_kv_heads=params.get("n_kv_heads"), vocab_size=vocab_size,
            multiple_of=params.get("multiple_of", 256), ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
            norm_eps=params.get("norm_eps", 1e-5), rope_theta=float(params.get("rope_theta", 10000.0)),
            rope_scaling=scaling, tie_embeddings="output.weight" not in shard0,
        )
    except KeyError as e:
        raise CheckpointError(f"{source}: lacks the field {e.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError, ConfigError) as e:
        raise CheckpointError(f"{source}: {e}") from None


def params_json(args: ModelArgs) -> dict:
    """params.json as Meta writes it; the FFN size is expressed through multiple_of and ffn_dim_multiplier."""
    multiple_of, multiplier = _ffn_rule(args)
    params = {
        "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads, "n_kv_heads": args.kv_heads,
        "vocab_size": args.vocab_size, "multiple_of": multiple_of, "ffn_dim_multiplier": multiplier,
        "norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "use_scaled_rope": args.rope_scaling is not None,
    }
    if args.rope_scaling not in (None, LLAMA31_SCALING):  # not expressible by Meta's flag: our own field
        params["rope_scaling"] = vars(args.rope_scaling)
    return params


def write(folder: Path, state: StateDict, args: ModelArgs, dtype: torch.dtype | None = None, shards: int = 1,
          tokenizer: Path | None = None, show_progress: bool = False) -> None:
    """params.json, `shards` consolidated.NN.pth files (one rank's slices each) and the tokenizer."""
    for name, tensor in state.items():
        dim = parallel_dim(name)
        if dim is not None and tensor.shape[dim] % shards:
            raise CheckpointError(f"--shards {shards} does not divide {name} {tuple(tensor.shape)} along dim {dim}")
    with progress_bar(len(state) * shards, show_progress, "writing consolidated.*.pth") as bar:
        for rank in range(shards):
            shard = {}
            for name, tensor in state.items():
                piece = rank_slice([tensor], parallel_dim(name), rank, shards).to(dtype or tensor.dtype)
                # torch.save stores whole storages: a slice of a bigger one is copied out first
                shard[name] = piece if piece.untyped_storage().nbytes() == piece.nbytes else piece.clone()
                bar.update()
            torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
            del shard
    write_json(folder / "params.json", params_json(args))
    if tokenizer is not None:
        copy_tokenizer_files(tokenizer, folder)


def _ffn_rule(args: ModelArgs) -> tuple[int, float | None]:
    """multiple_of and ffn_dim_multiplier that Meta's rule turns into args.ffn_hidden_dim."""
    hidden = args.ffn_hidden_dim
    if args.hidden_dim is None or args.replace(hidden_dim=None).ffn_hidden_dim == hidden:
        return args.multiple_of, args.ffn_dim_multiplier
    multiple_of = hidden & -hidden  # the largest power of two dividing it
    base = int(2 * 4 * args.dim / 3)
    for multiplier in (None, round(hidden / base, 4), hidden / base, (hidden + 0.5) / base):
        candidate = args.replace(hidden_dim=None, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
        if candidate.ffn_hidden_dim == hidden:
            return multiple_of, multiplier
    raise CheckpointError(f"FFN size {hidden} cannot be written as Meta's multiple_of / ffn_dim_multiplier rule "
                          f"for dim={args.dim}")
