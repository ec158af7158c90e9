"""Serving: a continuous-batching scheduler and the OpenAI-compatible HTTP API in front of it."""
from llamalab.serve.app import create_app
from llamalab.serve.calls import LockstepCalls, ModelCalls, follow
from llamalab.serve.request import Output, Request, TokenInfo
from llamalab.serve.scheduler import Scheduler
from llamalab.serve.server import Server, create_server

__all__ = ["LockstepCalls", "ModelCalls", "Output", "Request", "Scheduler", "Server", "TokenInfo", "create_app",
           "create_server", "follow"]
