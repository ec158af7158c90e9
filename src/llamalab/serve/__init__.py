"""Serving: a continuous-batching scheduler and the OpenAI-compatible HTTP API in front of it."""
from llamalab.serve.app import create_app
from llamalab.serve.generation import Generation, Output, StopStrings, TokenInfo
from llamalab.serve.scheduler import Scheduler

__all__ = ["Generation", "Output", "Scheduler", "StopStrings", "TokenInfo", "create_app"]
