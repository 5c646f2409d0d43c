"""Running code in several threads of the test process at once, each with its own database connection (closed at
its end), and the exceptions they raised."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


def run_in_threads(target: Callable[..., Any], arguments: Iterable[tuple[Any, ...]], *,
                   timeout: float = 120) -> list[BaseException]:
    """Call `target(*args)` in a thread per item of `arguments`; wait for all; return what they raised."""
    from django.db import connections

    failures: list[BaseException] = []

    def run(*args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # reported to the test, which asserts there were none
            failures.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=args) for args in arguments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    return failures
