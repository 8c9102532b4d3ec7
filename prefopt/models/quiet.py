"""Silencing one known, harmless library message while prefopt's own call runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class _DropMessages(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def without_log_messages(logger_name: str, text: str) -> Iterator[None]:
    """Drop records of ``logger_name`` that contain ``text``, only inside the ``with`` block
    (a user's own call outside it still logs them)."""
    logger = logging.getLogger(logger_name)
    flt = _DropMessages(text)
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)
