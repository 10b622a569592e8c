"""The training subsystem's errors: one branch of the `KapError` tree (kap.platform.errors)."""

from __future__ import annotations

from kap.platform.errors import KapError


class TrainingError(KapError):
    """Root of every error the training package raises on purpose."""


class CheckpointError(TrainingError):
    """A model or tokenizer path is missing or not a loadable checkpoint; the message names it."""


class ConversationError(TrainingError, ValueError):
    """A conversation cannot be rendered; the message names the file, line or message index.

    Also a ValueError, so callers that validate generic input can catch it without importing kap.
    """
