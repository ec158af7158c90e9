"""Data: the embedded story corpus (`stories`) and text → token shards (`shards`); training reads them back
through `llamalab.train.batches`."""
from llamalab.data.shards import documents, input_files, prepare, token_dtype, train_tokenizer
from llamalab.data.stories import stories, story, write_stories

__all__ = ["documents", "input_files", "prepare", "stories", "story", "token_dtype", "train_tokenizer",
           "write_stories"]
