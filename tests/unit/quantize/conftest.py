import pytest
import torch

from llamalab import ModelArgs
from llamalab.model import Transformer

VOCAB = 64


def arithmetic_sequences(n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences start, start+step, start+2*step ... (mod VOCAB): inputs and next-token targets."""
    start = torch.randint(0, VOCAB, (n, 1), generator=generator)
    step = torch.randint(1, 4, (n, 1), generator=generator)
    tokens = (start + step * torch.arange(length + 1)) % VOCAB  # (n, length + 1)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.fixture(scope="session")
def trained_model():
    """A tiny model trained for 40 steps to continue arithmetic sequences (loss ≈ 0.6 from ln 64 ≈ 4.2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, multiple_of=32, max_seq_len=32)
    model = Transformer(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        loss = model.loss(*arithmetic_sequences(16, 16, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture
def held_out():
    return arithmetic_sequences(64, 16, torch.Generator().manual_seed(1))
