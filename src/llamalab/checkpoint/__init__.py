"""Checkpoint formats: pure state-dict transforms (key maps as data) and file readers / writers."""
