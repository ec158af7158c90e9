"""Training: token data, the embedded story corpus, AdamW + warmup/cosine, the loop with exact resume, LoRA."""
from llamalab.train.build import build_model, prepare_model, unwrap
from llamalab.train.config import TrainConfig
from llamalab.train.data import Batches, TokenData, prepare, train_tokenizer
from llamalab.train.lora import apply_lora, load_adapters, merge_lora, save_adapters
from llamalab.train.optim import build_optimizer, build_scheduler, lr_factor
from llamalab.train.stories import stories, write_stories
from llamalab.train.trainer import Trainer, build_trainer

__all__ = [
    "Batches", "TokenData", "TrainConfig", "Trainer", "apply_lora", "build_model", "build_optimizer",
    "build_scheduler", "build_trainer", "load_adapters", "lr_factor", "merge_lora", "prepare", "prepare_model",
    "save_adapters", "stories", "train_tokenizer", "unwrap", "write_stories",
]
