"""Silencing one known, harmless library message while prefopt's own call runs."""

from __future__ import annotations

import contextlib
import logging
import sys
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


def quiet_bitsandbytes_import() -> None:
    """Import bitsandbytes (when installed and not yet imported) without its import-time line
    "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install kernels" (on
    CPUs with AVX512-BF16 it looks for an optional kernel package and falls back to its own
    kernel). peft imports bitsandbytes, so prefopt calls this before its own first import of
    peft or first k-bit load; a user's own first import elsewhere still shows the line."""
    if "bitsandbytes" in sys.modules:
        return
    with without_log_messages(
        "bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"
    ):
        try:
            import bitsandbytes  # noqa: F401
        except Exception:  # absent or broken: the caller's own import reports it
            pass
