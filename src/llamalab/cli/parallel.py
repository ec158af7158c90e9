"""--tp for the model-taking commands: join the torchrun group and load the model split over its ranks."""
from __future__ import annotations

import argparse
import secrets
from functools import partial
from typing import TYPE_CHECKING

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.parallel.sizes import check_tp_size

if TYPE_CHECKING:
    import torch

    from llamalab.model import Transformer


def add_tp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tp", type=int, default=1, metavar="N",
                        help="tensor-parallel size: split the model over the N processes of "
                             "`torchrun --nproc-per-node N -m llamalab ...` (default 1)")


def load_tensor_parallel(args: argparse.Namespace, dtype: torch.dtype) -> Transformer:
    """The model of MODEL (each rank reading only its part) or of --preset --random-init, split over args.tp ranks."""
    import torch

    from llamalab.checkpoint.parts import read_args, read_parts
    from llamalab.model import Transformer
    from llamalab.parallel.loading import load_tp_model  # DTensor takes 2 s to import: only when --tp asks
    from llamalab.parallel.mesh import init_distributed, make_mesh
    from llamalab.parallel.tensor_parallel import apply_tp

    if args.quantize:
        raise ConfigError("--quantize does not combine with --tp; drop one of them")
    if bool(args.model) == bool(args.preset and args.random_init):
        raise ConfigError("give MODEL (a checkpoint folder or file), or --preset NAME --random-init")
    model_args = ModelArgs.from_preset(args.preset) if args.random_init else read_args(args.model)
    check_tp_size(model_args, args.tp)  # before any weight is read or made
    device = init_distributed(torch.device(args.device).type)
    tp_mesh = make_mesh(tp=args.tp, device_type=device.type)["tp"]
    share_seed(args)
    if args.model:
        return load_tp_model(model_args, tp_mesh, partial(read_parts, args.model), device, dtype)
    torch.manual_seed(args.seed)  # the weights of the same seed without --tp
    with device:
        model = Transformer(model_args).to(dtype).eval()
    return apply_tp(model, tp_mesh)


def share_seed(args: argparse.Namespace) -> None:
    """Every rank must sample the same tokens: without --seed, rank 0 chooses one seed for all."""
    import torch.distributed as dist

    if args.seed is None:
        seed = [secrets.randbits(31) if dist.get_rank() == 0 else None]  # OS entropy: torch's default seed is fixed
        dist.broadcast_object_list(seed, src=0)
        args.seed = seed[0]
