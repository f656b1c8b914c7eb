"""Structured logging, configured once: JSON lines rendered by orjson, filtered by level up front."""

from __future__ import annotations

import logging
import sys
from typing import BinaryIO

import orjson
import structlog

__all__ = ["configure_logging"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", *, stream: BinaryIO | None = None) -> None:
    """The fastest structlog setup (its performance page): orjson renderer, bytes logger, level filter.

    Call it once at process start (the CLI does). Libraries embedding soloist may configure structlog
    themselves instead; the runtime only calls ``structlog.get_logger``.
    """
    try:
        threshold = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, got {level!r}") from None
    structlog.configure(
        cache_logger_on_first_use=True,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        logger_factory=structlog.BytesLoggerFactory(file=stream or sys.stderr.buffer),
    )
