"""Cached look-ups for the hot path of every request (an API key, a model's route), invalidated by generation.

Each `CachedLookup` keeps its entries in the process's memory, under a generation number that lives in Django's
cache: Redis when REDIS_URL is set (every process on every host), else a file cache under VAR_DIR (every process on
this host). Invalidating a look-up writes a new generation at once and again when the current transaction commits, so
that no process keeps, under the last generation, what it read before the change was committed; every process's
entries of older generations are dead at its next read. A hit costs one read of the generation and no SQL.

Entries also expire after LOOKUP_CACHE_SECONDS: that bounds how long a change made behind the services' back (a
queryset update in a shell) can go unseen. 0 turns the caching off.
"""
from __future__ import annotations

import logging
import pickle
import threading
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar

from django.conf import settings
from django.core.cache import cache
from django.db import models, transaction
from django.db.models.signals import post_delete, post_save

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Past this many entries a look-up forgets them all: cheaper than an LRU, and the working set refills at once.
MAX_ENTRIES = 10_000


class CachedLookup(Generic[T]):
    """A read-through cache of `load(key)` answers; `None` (not found) is never cached.

    With `copies`, every `get` returns a copy of its own: for mutable answers (model instances) that two requests
    must not share. The entry is then kept pickled, and each hit unpickles it.
    """

    def __init__(self, name: str, *, copies: bool = False):
        self.name = name
        self._generation_key = f"lookup-generation:{name}"
        self._copies = copies
        self._entries: dict[tuple[str, str], tuple[float, T | bytes]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T | None]) -> T | None:
        ttl = settings.LOOKUP_CACHE_SECONDS  # read per use, so that tests' settings overrides apply
        if ttl <= 0:
            return load()
        # The generation is read before the database: an entry loaded across a change is stored under the old one.
        generation = self.generation()
        if generation is None:
            return load()
        slot = (generation, key)
        now = time.monotonic()
        entry = self._entries.get(slot)
        if entry is not None and entry[0] > now:
            return pickle.loads(entry[1]) if self._copies else entry[1]
        value = load()
        if value is not None:
            self._put(slot, value, expires=now + ttl)
        return value

    def replace(self, key: str, value: T) -> None:
        """Store a newer `value` of `key` (one the caller itself just wrote), under the current generation."""
        ttl = settings.LOOKUP_CACHE_SECONDS
        generation = self.generation() if ttl > 0 else None
        if generation is not None:
            self._put((generation, key), value, expires=time.monotonic() + ttl)

    def _put(self, slot: tuple[str, str], value: T, *, expires: float) -> None:
        kept = pickle.dumps(value) if self._copies else value
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[slot] = (expires, kept)

    def invalidate(self) -> None:
        """Forget every entry, in every process: now (so that this transaction reads its own change) and again once
        the current transaction commits (so that no process keeps what it read before the commit)."""
        self._new_generation()
        if transaction.get_connection().in_atomic_block:
            transaction.on_commit(self._new_generation)

    def generation(self) -> str | None:
        """The current generation; None when the shared cache cannot be read (then nothing is cached)."""
        try:
            generation = cache.get(self._generation_key)
            if generation is None:
                # First use, or the cache was cleared (which counts as a change): one process's generation wins.
                cache.add(self._generation_key, uuid.uuid4().hex, timeout=None)
                generation = cache.get(self._generation_key)
        except Exception as exc:  # the cache's client raises its own types (Redis, files); the look-up still works
            logger.warning("%s: the shared cache is unavailable, looking up uncached: %s", self.name, exc)
            return None
        return generation

    def _new_generation(self) -> None:
        with self._lock:
            self._entries.clear()
        try:
            cache.set(self._generation_key, uuid.uuid4().hex, timeout=None)
        except Exception as exc:
            # Other processes keep their entries until they expire (LOOKUP_CACHE_SECONDS).
            logger.error("%s: could not invalidate the shared cache: %s", self.name, exc)


def on_changes_to(*senders: type[models.Model], call: Callable[..., None]) -> None:
    """Call `call` after every save and delete of a row of `senders`, anywhere (the admin's forms, a shell): how an
    app invalidates its look-ups on changes that do not pass through its services. Connect it in `AppConfig.ready`."""
    for sender in senders:
        for event, signal in (("save", post_save), ("delete", post_delete)):
            uid = f"{call.__module__}.{call.__name__}:{event}:{sender._meta.label}"
            signal.connect(call, sender=sender, dispatch_uid=uid)
