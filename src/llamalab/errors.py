"""Exceptions a user can cause. The CLI prints them as one line and exits non-zero."""


class LlamalabError(Exception):
    """Base class of every error llamalab raises for bad input; the message says what to do."""


class ConfigError(LlamalabError, ValueError):
    """A model or training configuration that cannot work (names the field and the fix)."""


class ContextLengthError(LlamalabError, ValueError):
    """A prompt or generation that does not fit in the model's context or KV cache."""


class CheckpointError(LlamalabError):
    """A checkpoint file that is missing, truncated, of the wrong format or disagrees with its config."""


class OutputError(LlamalabError):
    """A destination that must not be replaced: a device or FIFO, a non-empty folder, a folder where a file goes."""


class TokenizerError(LlamalabError):
    """A tokenizer file that is missing or cannot be read."""


class ChatFormatError(LlamalabError, ValueError):
    """A chat dialog the chat format cannot express (unknown or out-of-order roles, a template's own error)."""


class ServerBusyError(LlamalabError):
    """A server that has too many requests waiting to take another one now (retry later)."""


class DataError(LlamalabError):
    """Training data that is missing, empty, unreadable or too small for the batch asked for."""
