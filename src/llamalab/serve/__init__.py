"""Serving: a continuous-batching scheduler and the OpenAI-compatible HTTP API in front of it."""
from llamalab.serve.app import create_app
from llamalab.serve.request import Output, Request, TokenInfo
from llamalab.serve.scheduler import Scheduler

__all__ = ["Output", "Request", "Scheduler", "TokenInfo", "create_app"]
