"""The worker's side of a job's events: taken at once from whoever produces them, written later in batches.

The output pump, the gateway's request threads and the runner call `EventWriter.emit` / `EventWriter.output`,
which only append to a list under a lock: the script never waits for the store. A thread of the writer's own
writes what gathered every JOB_EVENTS_FLUSH_SECONDS, or sooner once JOB_EVENTS_FLUSH_BYTES are waiting. A store
that is slow or down delays only that thread; its failures are logged and the job goes on.

Output is line-buffered: a `stdout` / `stderr` event carries whole lines (several when they came together), in
the order they arrived relative to the other events. A line longer than JOB_EVENTS_FLUSH_BYTES goes out in
pieces; the last piece of a stream that reached its cap is marked `truncated`.
"""
import codecs
import logging
import threading
from typing import Any

from django.db import connection

from .store import EventStore

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("stdout", "stderr")


class _Lines:
    """One output stream's bytes not yet sent: whole lines are taken, a partial line waits for its end."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended = False

    def take(self, *, everything: bool, limit: int) -> str:
        cut = len(self.data) if everything or len(self.data) >= limit else self.data.rfind(b"\n") + 1
        if cut <= 0:
            return ""
        piece, self.data = bytes(self.data[:cut]), self.data[cut:]
        # PostgreSQL cannot store NUL in JSON text; the Job row replaces it the same way.
        return self.decoder.decode(piece, final=everything).replace("\x00", "\ufffd")


class EventWriter:
    """Buffers one job's events and writes them in batches from its own thread. `start()`, then `close()`."""

    def __init__(self, job_id: str, *, store: EventStore, flush_seconds: float, flush_bytes: int):
        self.job_id = str(job_id)
        self._store = store
        self._flush_seconds = flush_seconds
        self._flush_bytes = flush_bytes
        self._pending: list[tuple[str, dict[str, Any]]] = []
        self._pending_bytes = 0
        self._lines = {kind: _Lines() for kind in OUTPUT_KINDS}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"events-{self.job_id[:8]}", daemon=True)

    def start(self) -> "EventWriter":
        self._thread.start()
        return self

    # --- producers (never block) ---------------------------------------------------------------------------------

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Queue one event after everything received before it (whole lines of output included)."""
        with self._lock:
            for stream in OUTPUT_KINDS:
                self._take_output(stream, everything=False)
            self._pending.append((kind, data))
        self._wake.set()

    def output(self, stream: str, data: bytes, truncated: bool = False) -> None:
        """Take bytes of `stream` ("stdout" or "stderr") as the container wrote them; `truncated` when this is
        the last part kept under the cap (nothing more of the stream follows)."""
        with self._lock:
            lines = self._lines[stream]
            if lines.ended:
                return
            lines.data += data
            if truncated:
                lines.ended = True
                self._take_output(stream, everything=True, truncated=True)
            elif b"\n" in data or len(lines.data) >= self._flush_bytes:
                self._take_output(stream, everything=False)
            full = self._pending_bytes >= self._flush_bytes
        if full:
            self._wake.set()

    def _take_output(self, stream: str, *, everything: bool, truncated: bool = False) -> None:
        """Move `stream`'s whole lines (or all of it) into the pending events; merges with the last event when it
        is of the same stream, so a burst of lines becomes one event. Called with the lock held."""
        text = self._lines[stream].take(everything=everything, limit=self._flush_bytes)
        if not text and not truncated:
            return
        self._pending_bytes += len(text)
        if self._pending and self._pending[-1][0] == stream and not self._pending[-1][1]["truncated"] \
                and len(self._pending[-1][1]["text"]) < self._flush_bytes:
            last = self._pending[-1][1]
            last["text"] += text
            last["truncated"] = truncated
        else:
            self._pending.append((stream, {"text": text, "truncated": truncated}))

    # --- the writing thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                self._wake.wait(self._flush_seconds)
                self._wake.clear()
                self._flush()
        finally:
            connection.close()  # this thread's own connection

    def _flush(self, *, everything: bool = False) -> None:
        with self._lock:
            if everything:
                for stream in OUTPUT_KINDS:
                    self._take_output(stream, everything=True)
            batch, self._pending, self._pending_bytes = self._pending, [], 0
        if not batch:
            return
        try:
            self._store.append(self.job_id, batch)
        except Exception:  # a store that fails loses these events; it must never fail the job
            logger.warning("job %s: could not write %d events", self.job_id, len(batch), exc_info=True)

    def close(self, timeout: float = 10.0) -> None:
        """Write everything left (partial lines too) and stop. Waits at most `timeout` s for the store."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("job %s: the event store is slow; the last events are dropped", self.job_id)
            return
        self._flush(everything=True)
