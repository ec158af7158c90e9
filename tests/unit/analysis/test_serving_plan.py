"""The server's memory plan, arithmetic only: Llama 2 7B starts on an 80 GB card with the paged default, where every
slot at full context (the fixed-slot engine) did not; CPU budgets stay bounded."""
import pytest
import torch

from llamalab.analysis.memory import kv_cache_bytes, weight_bytes
from llamalab.analysis.serving import CPU_CACHE_LIMIT, serving_plan
from llamalab.checkpoint.weights import meta_model
from llamalab.config import ModelArgs
from llamalab.errors import ConfigError

CARD = 80 * 10**9  # an "80 GB" card, in decimal bytes (the smaller reading)
CUDA_CONTEXT = 2**30  # what the CUDA context and allocator take before any tensor


@pytest.fixture(scope="module")
def llama7b():
    """Llama 2 7B on the meta device in bfloat16: shapes and bytes, nothing allocated."""
    return meta_model(ModelArgs.from_preset("llama2-7b")).to(torch.bfloat16)


def test_llama2_7b_starts_on_an_80gb_card_by_default(llama7b):
    args = llama7b.args
    weights = sum(p.nbytes for p in llama7b.parameters())
    assert weights == 2 * 6_738_415_616 == weight_bytes(args, "bf16")  # DESIGN's parameter count, two bytes each
    per_token = llama7b.kv_bytes_per_token()
    assert per_token == kv_cache_bytes(args, 1, 1, "bf16") == 2 * 32 * 4096 * 2  # k and v, 32 layers of 4096
    fixed = 32 * 4096 * per_token  # the fixed-slot engine: 32 slots x 4096 positions up front
    assert round(fixed / 1e9, 1) == 68.7 and CUDA_CONTEXT + weights + fixed > CARD  # the 82 GB: no start
    plan = serving_plan(args, weights_bytes=weights, free_bytes=CARD - CUDA_CONTEXT - weights,
                        kv_bytes_per_token=per_token, slots=32, max_seq_len=4096, device_type="cuda")
    assert CUDA_CONTEXT + plan.total_bytes <= CARD  # weights + cache + workspace fit
    assert plan.workspace_bytes >= 32 * 4096 * per_token // 32  # one layer's k and v gathered for 32 full rows
    assert plan.cache_bytes == (plan.blocks + 1) * 16 * per_token and plan.tokens == plan.blocks * 16
    assert plan.tokens > 100_000  # 52 GiB of cache: 26 full 4096-token requests, all 32 slots at 1024 tokens
    assert (plan.requests_at(4096), plan.requests_at(1024)) == (plan.tokens // 4096, 32)
    assert "6,731 blocks of 16 = 107,696 tokens" in plan.describe()


def test_the_default_cache_never_exceeds_every_slot_at_full_context(llama7b):
    per_token = llama7b.kv_bytes_per_token()
    plan = serving_plan(llama7b.args, weights_bytes=0, free_bytes=10**12, kv_bytes_per_token=per_token, slots=4,
                        max_seq_len=100)
    assert plan.blocks == 4 * 7  # ceil(100 / 16) blocks per slot: more could never be used at once


def test_a_cpu_default_is_a_quarter_of_the_free_ram_up_to_a_limit(llama7b):
    per_token, block = llama7b.kv_bytes_per_token(), 16 * llama7b.kv_bytes_per_token()
    small = serving_plan(llama7b.args, weights_bytes=0, free_bytes=8 * 2**30, kv_bytes_per_token=per_token,
                         slots=32, max_seq_len=4096, device_type="cpu")
    assert small.cache_bytes == (2 * 2**30 // block) * block  # a quarter of 8 GiB, in whole blocks
    large = serving_plan(llama7b.args, weights_bytes=0, free_bytes=512 * 2**30, kv_bytes_per_token=per_token,
                         slots=32, max_seq_len=4096, device_type="cpu")
    assert large.cache_bytes == (CPU_CACHE_LIMIT // block) * block


def test_a_budget_below_two_blocks_is_a_config_error(llama7b):
    with pytest.raises(ConfigError, match="--kv-cache-memory"):
        serving_plan(llama7b.args, weights_bytes=0, free_bytes=0, kv_bytes_per_token=llama7b.kv_bytes_per_token(),
                     slots=1, max_seq_len=16, cache_bytes=16 * llama7b.kv_bytes_per_token())
