"""Text generation: samplers, the prefill/decode loop on the KV cache, streaming, speculative decoding."""
from llamalab.generate.sampling import SamplingParams, make_generator, probabilities, sample, token_logprobs

__all__ = ["SamplingParams", "make_generator", "probabilities", "sample", "token_logprobs"]
