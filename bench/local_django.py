"""Django in the bench's own process, on a throw-away folder: for the benches that call the services directly."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def setup_django(workdir: str, *, silence: int = logging.WARNING, **env: str) -> None:
    """Set up Django on a SQLite database of `workdir`'s own (VAR_DIR too), with `env` added to the environment
    first, and migrate it; log records up to `silence` are dropped (the benches print figures only)."""
    os.environ.update({"DATABASE_URL": f"sqlite:///{workdir}/bench.sqlite3", "VAR_DIR": workdir, **env})
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra_ainode.settings")
    sys.path.insert(0, str(REPO_ROOT))
    import django
    from django.core.management import call_command

    django.setup()
    logging.disable(silence)
    call_command("migrate", verbosity=0)
