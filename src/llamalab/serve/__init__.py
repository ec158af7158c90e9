"""Serving: a continuous-batching scheduler and the OpenAI-compatible HTTP API in front of it."""
from llamalab.serve.app import create_app
from llamalab.serve.calls import LockstepCalls, ModelCalls, follow
from llamalab.serve.request import Output, Request, TokenInfo
from llamalab.serve.scheduler import Scheduler

__all__ = ["LockstepCalls", "ModelCalls", "Output", "Request", "Scheduler", "TokenInfo", "create_app", "follow"]
