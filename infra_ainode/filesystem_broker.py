"""kombu's filesystem transport (the development broker), with each message written atomically.

kombu creates a message file and only then writes into it. A worker that polls in between moves the still-empty
file away, fails to decode it and drops it: the job is lost and stays `queued` for ever (measured here: about
1,700 of 20,000 messages lost to a busy consumer). Here a message is written under a name that readers ignore
and then renamed into place, which is atomic within one folder.

kombu's consumer also sleeps `polling_interval` between looks at an empty folder, a fixed delay between a submit
and its start. Here a consumer waits on a doorbell instead: a FIFO of its own in the control folder, to which a
producer writes one byte after each message. The polling interval remains only as a fallback (a doorbell lost to
a race costs at most that long).
"""
import errno
import os
import select
import socket
import uuid
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport.virtual import Empty
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


# A consumer whose loop has not looked at its queues for this long is not consuming (it looks at least every polling
# interval, and Celery's loop asks every 2 s at the most).
STALLED_AFTER_SECONDS = 30.0


class Channel(filesystem.Channel):
    _looked_at: float | None = None

    def drain_events(self, *args: object, **kwargs: object) -> object:
        # Asked by the consumer's loop whether or not its prefetch has room: the loop is alive and looking.
        self._looked_at = monotonic()
        return super().drain_events(*args, **kwargs)

    def consuming(self) -> bool:
        """Whether the consumer's loop has looked at this channel's queues lately (the worker's liveness file,
        infra_ainode/celery.py)."""
        return self._looked_at is None or monotonic() - self._looked_at <= STALLED_AFTER_SECONDS

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        # Same name scheme as kombu's, so that its reader (which matches "<anything>.<queue>.msg") finds it.
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # "<...>.<queue>.msg.part" does not match the reader's pattern
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc
        ring(self.control_folder)

    # A consumer whose prefetch is full waits even with messages in the folder; an ack or reject (from the pool's
    # result thread) makes room, so it rings this process's own doorbell.
    def basic_ack(self, *args: object, **kwargs: object) -> None:
        super().basic_ack(*args, **kwargs)
        self.connection.wake()

    def basic_reject(self, *args: object, **kwargs: object) -> None:
        super().basic_reject(*args, **kwargs)
        self.connection.wake()


DOORBELL_PREFIX = "doorbell-"


def ring(folder: Path) -> None:
    """Wake every consumer waiting on a doorbell in `folder`; doorbells of consumers that are gone are removed."""
    try:
        names = [name for name in os.listdir(folder) if name.startswith(DOORBELL_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody reads it: its consumer died
                _unlink(path)
            continue
        try:
            os.write(fd, b"!")
        except OSError:  # EAGAIN: its pipe is full of rings not yet heard, so it will wake anyway
            pass
        finally:
            os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Doorbell:
    """A consumer's doorbell: a FIFO that it holds open for reading (and writing, so that it never reads EOF)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = str(folder / f"{DOORBELL_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.mkfifo(self.path, 0o600)
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
        self.pid = os.getpid()

    def ring(self) -> None:
        try:
            os.write(self.fd, b"!")
        except OSError:  # full: it will wake anyway
            pass

    def wait(self, timeout: float) -> None:
        """Return when rung, or after `timeout` seconds."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if readable:
            try:
                while os.read(self.fd, 4096):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        os.close(self.fd)
        _unlink(self.path)


class Transport(filesystem.Transport):
    Channel = Channel
    _doorbell: Doorbell | None = None

    def drain_events(self, connection, timeout: float | None = None) -> None:
        """kombu's loop, but between empty looks it waits on this process's doorbell instead of sleeping."""
        started = monotonic()
        interval = self.polling_interval
        if timeout and interval and interval > timeout:
            interval = timeout
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                if timeout is not None and monotonic() - started >= timeout:
                    raise socket.timeout() from None
                if interval is not None:
                    self._bell(connection).wait(interval)

    def wake(self) -> None:
        """Wake this process's consumer (when it waits on its doorbell)."""
        if self._doorbell is not None and self._doorbell.pid == os.getpid():
            self._doorbell.ring()

    def _bell(self, connection) -> Doorbell:
        if self._doorbell is None or self._doorbell.pid != os.getpid():  # a forked child gets its own
            options = connection.client.transport_options
            self._doorbell = Doorbell(Path(options.get("control_folder", "control")))
        return self._doorbell

    def close_connection(self, connection) -> None:
        if self._doorbell is not None and self._doorbell.pid == os.getpid():
            self._doorbell.close()
            self._doorbell = None
        super().close_connection(connection)


def install() -> None:
    """Make `filesystem://` broker URLs use this transport (kombu resolves URL schemes through its aliases)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
