"""A tensor-parallel size that cannot split the model is one clear error, raised before any weight is read."""
from types import SimpleNamespace

import pytest

from llamalab.config import ModelArgs
from llamalab.errors import ConfigError
from llamalab.parallel.loading import load_tp_model
from llamalab.parallel.sizes import check_tp_size

ARGS = ModelArgs(dim=96, n_layers=1, n_heads=6, n_kv_heads=2, vocab_size=96, hidden_dim=192)


@pytest.mark.parametrize("tp, message", [(4, "does not divide n_heads=6"), (3, "n_kv_heads=2 do not divide"),
                                         (5, "does not divide n_heads=6")])
def test_tp_size_that_does_not_split_the_heads_is_a_config_error(tp, message):
    with pytest.raises(ConfigError, match=message):
        check_tp_size(ARGS, tp)


def test_replicated_kv_heads_serve_inference_but_not_training():
    check_tp_size(ARGS, 6)  # 2 KV heads, 6 ranks: each KV head copied to 3 ranks
    with pytest.raises(ConfigError, match="inference only.*--tp 2"):
        check_tp_size(ARGS, 6, training=True)


def test_loading_checks_the_tp_size_before_reading_weights():
    def read_parts(parts):
        pytest.fail("weights were read before the TP size was checked")

    with pytest.raises(ConfigError, match="tensor-parallel size 4"):
        load_tp_model(ARGS, SimpleNamespace(size=lambda: 4), read_parts)
