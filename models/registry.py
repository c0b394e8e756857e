"""Stack selection: `[models] stack = "..."` names one of these loaders."""

from __future__ import annotations

from collections.abc import Callable

from models.interfaces import ModelStack
from realtime.config import Config


def _embedded(config: Config) -> ModelStack:
    from models import embedded

    return embedded.load(config)


def _openai(config: Config) -> ModelStack:
    from models import openai_compat

    return openai_compat.load(config)


def _step_audio(config: Config) -> ModelStack:
    from models import step_audio

    return step_audio.load(config)


def _echo(config: Config) -> ModelStack:
    from models import echo

    return echo.load(config)


LOADERS: dict[str, Callable[[Config], ModelStack]] = {
    "embedded": _embedded,
    "openai": _openai,
    "step-audio": _step_audio,
    "echo": _echo,
}


def load_stack(config: Config) -> ModelStack:
    """Load the configured stack (slow: seconds). Call it off the event loop, once per process."""
    return LOADERS[config.models.stack](config)
