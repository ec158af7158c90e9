"""A Hugging Face `tokenizer.json`, run by the `tokenizers` library; BOS/EOS from `tokenizer_config.json`."""
from __future__ import annotations

from pathlib import Path

import tokenizers

from llamalab.errors import TokenizerError
from llamalab.files import read_json
from llamalab.tokenizer.base import Tokenizer

# Names of the begin / end / end-of-turn tokens of common Llama-family vocabularies, used when
# tokenizer_config.json does not name them.
KNOWN_BOS = ("<s>", "<|begin_of_text|>")
KNOWN_EOS = ("</s>", "<|end_of_text|>", "<|endoftext|>")
KNOWN_END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>")
# transformers' tokenizer classes whose add_bos_token defaults to true
BOS_ADDING_CLASSES = ("LlamaTokenizer", "CodeLlamaTokenizer", "GemmaTokenizer")


def sampling_defaults(generation_config: dict) -> dict[str, float | int]:
    """The sampler settings a generation_config.json recommends (greedy when do_sample is false)."""
    if generation_config.get("do_sample") is False:
        return {"temperature": 0.0}
    return {name: generation_config[name] for name in ("temperature", "top_p", "top_k", "min_p")
            if isinstance(generation_config.get(name), (int, float)) and not isinstance(generation_config[name], bool)}


class HFTokenizer(Tokenizer):
    """A `tokenizer.json`; special tokens from the `tokenizer_config.json` / `generation_config.json` beside it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.model = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises a bare Exception for unreadable files
            raise TokenizerError(f"{self.path}: not a readable tokenizer.json ({e})") from None
        config = read_json(self.path.parent / "tokenizer_config.json", TokenizerError, default={})
        self.bos_id = self._special_id(config.get("bos_token"), KNOWN_BOS)
        self.eos_id = self._special_id(config.get("eos_token"), KNOWN_EOS)
        self.pad_id = self._special_id(config.get("pad_token"), ())
        generation = read_json(self.path.parent / "generation_config.json", TokenizerError, default={})
        generation_eos = generation.get("eos_token_id", [])
        generation_eos = generation_eos if isinstance(generation_eos, list) else [generation_eos]
        end_of_turn = {self.model.token_to_id(t) for t in KNOWN_END_OF_TURN}
        self.stop_ids = frozenset(({self.eos_id} | end_of_turn | set(generation_eos)) - {None})
        self.add_bos = self._adds("add_bos_token", config, self.bos_id, first=True)
        self.add_eos = self._adds("add_eos_token", config, self.eos_id, first=False)
        self.sampling_defaults = sampling_defaults(generation)

    def _adds(self, key: str, config: dict, token_id: int | None, first: bool) -> bool:
        """Whether encoding adds this BOS/EOS, as transformers decides: tokenizer_config.json's flag, else the
        tokenizer class's default (Llama's and Gemma's add BOS), else what tokenizer.json's post-processor adds."""
        if token_id is None:
            return False
        if isinstance(config.get(key), bool):
            return config[key]
        ids = self.model.encode("a", add_special_tokens=True).ids
        if ids and ids[0 if first else -1] == token_id:
            return True
        if str(config.get("tokenizer_class", "")).startswith(BOS_ADDING_CLASSES):
            return first
        return first and self.model.post_processor is None  # a bare tokenizer.json: BOS, as encode always did

    def _special_id(self, configured: str | dict | None, known: tuple[str, ...]) -> int | None:
        """Id of the token named in tokenizer_config.json (a string or an AddedToken dict), else of a known name."""
        if isinstance(configured, dict):
            configured = configured.get("content")
        for token in ([configured] if configured else []) + list(known):
            token_id = self.model.token_to_id(token)
            if token_id is not None:
                return token_id
        return None

    @property
    def vocab_size(self) -> int:
        return self.model.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.model.get_added_tokens_decoder().items() if t.special}

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        self.model.encode_special_tokens = not allow_special
        return self.model.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(list(ids), skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        return self.model.id_to_token(token_id)
