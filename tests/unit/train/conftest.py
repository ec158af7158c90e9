"""A small prepared corpus shared by the training tests: generated stories, a 320-token vocabulary, shards."""
import pytest
import torch

from llamalab.data import prepare, train_tokenizer, write_stories
from llamalab.train.config import TrainConfig

VOCAB = 320
TINY_MODEL = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16, tie_embeddings=True)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from more threads, and on a shared CPU several contend badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """(stories.jsonl, tokenizer.model, prepared folder) of 300 stories."""
    root = tmp_path_factory.mktemp("corpus")
    stories = write_stories(root / "stories.jsonl", 300, seed=1)
    tokenizer = train_tokenizer([stories], VOCAB, root / "tokenizer.model")
    prepare([stories], tokenizer, root / "data", val_fraction=0.05, workers=1, progress=False)
    return stories, tokenizer, root / "data"


@pytest.fixture
def tiny_config(corpus, tmp_path):
    """TrainConfig(**overrides) of a 2-layer, 32-wide model on the corpus, writing into tmp_path."""
    def make(**overrides):
        settings = dict(data=str(corpus[2]), out_dir=str(tmp_path / "run"), model=dict(TINY_MODEL), seq_len=32,
                        batch_size=4, max_steps=10, warmup_steps=2, lr=1e-2, min_lr=1e-3, eval_every=0,
                        eval_batches=2, log_every=1, save_every=0, sample_tokens=8, progress=False,
                        dtype="float32")  # exact comparisons: not "auto", which is bfloat16 on some CPUs
        return TrainConfig(**{**settings, **overrides})
    return make
