"""What comes back from a job's container, made safe to store: its output, the result and error its runtime
reported, and its peak memory.

What the runtime reports comes from inside the container, so the script may have written it: nothing in it may stop
the job's row from being saved (PostgreSQL refuses NUL in text and jsonb, and text with a lone surrogate; a number
may overflow a column), and nothing it claims is believed past what the engine allows.
"""
import math
import re
from typing import Any

from .sandbox.docker_backend import ContainerOutcome
from .sandbox.result_channel import ResultReport

ERROR_MESSAGE_MAX_CHARS = 16_384
# NUL and the surrogates: a str holds a surrogate only unpaired (JSON's "\ud800" parses to one), and no database
# stores either in text.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def clean_text(text: str) -> str:
    """`text` with NUL characters and lone surrogates each replaced by U+FFFD: what every database can store."""
    return _UNSTORABLE.sub("\ufffd", text)


def output_text(data: bytes) -> str:
    """Captured output as storable text; a hostile script's output may be full of NULs and invalid UTF-8."""
    return clean_text(data.decode("utf-8", errors="replace"))


def clean_json(value: Any) -> Any:
    """`value` (parsed JSON) with every NUL character and lone surrogate, in strings and keys, replaced by U+FFFD,
    and numbers too large for a float (`1e999` parses as infinity, which JSON columns refuse) replaced by null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        return [clean_json(item) for item in value]
    if isinstance(value, dict):
        return {clean_text(key): clean_json(item) for key, item in value.items()}
    return value


def script_error(error: dict[str, Any] | None) -> str:
    """The script's exception as one bounded line of text, whatever types the report holds."""
    if not error:
        return ""
    text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
    return clean_text(text)[:ERROR_MESSAGE_MAX_CHARS]


def peak_memory(outcome: ContainerOutcome, report: ResultReport, limit_bytes: int) -> int | None:
    """The larger of the engine's and the runtime's figures; the runtime's is believed only up to the job's limit
    (a container cannot use more), since the script may have posted it."""
    reported = report.peak_memory_bytes
    if not isinstance(reported, int) or isinstance(reported, bool) or reported <= 0:
        reported = None
    peaks = [p for p in (outcome.peak_memory_bytes, min(reported, limit_bytes) if reported else None) if p]
    return max(peaks) if peaks else None
