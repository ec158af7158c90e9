import dataclasses
from collections import Counter

import pytest

from llamalab.analysis import count_parameters
from llamalab.config import PRESETS, ModelArgs

# the module that owns a parameter (second-to-last part of its Meta name) -> its component
COMPONENTS = {
    "tok_embeddings": "embedding", "wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
    "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward",
    "attention_norm": "norms", "ffn_norm": "norms", "norm": "norms", "output": "output",
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_per_component_equal_the_built_model(preset, meta_model):
    args, model = ModelArgs.from_preset(preset), meta_model(preset)
    measured = Counter()
    for name, p in model.named_parameters():  # a tied head is listed once, under tok_embeddings
        measured[COMPONENTS[name.split(".")[-2]]] += p.numel()
    counts = count_parameters(args)
    assert {f.name: getattr(counts, f.name) for f in dataclasses.fields(counts) if getattr(counts, f.name)} == measured
    assert counts.total == sum(p.numel() for p in model.parameters())


def test_published_counts():
    assert count_parameters(ModelArgs.from_preset("llama2-7b")).total == 6_738_415_616
    assert count_parameters(ModelArgs.from_preset("llama2-13b")).total == 13_015_864_320
    assert count_parameters(ModelArgs.from_preset("llama3-8b")).total == 8_030_261_248
    assert count_parameters(ModelArgs.from_preset("stories15M")).total == 15_191_712
