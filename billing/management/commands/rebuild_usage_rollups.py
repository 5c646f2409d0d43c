"""Rebuild the daily usage roll-ups from the LLMCall ledger and the jobs (all days, or --from/--to)."""
import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import DomainError
from core.ranges import parse_day

from ...rebuild import rebuild_rollups


class Command(BaseCommand):
    help = ("Recompute the daily usage roll-ups from the LLMCall ledger and the jobs, for every day or for "
            "--from/--to (YYYY-MM-DD, both included). New calls and jobs wait while it runs, so the result is exact; "
            "on SQLite a writer waits 20 s at most, so rebuild a busy system's long history range by range.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="start", help="first day (YYYY-MM-DD); default: the ledger's first")
        parser.add_argument("--to", dest="end", help="last day (YYYY-MM-DD); default: the ledger's last")

    def handle(self, *args, start: str | None, end: str | None, **options) -> None:
        try:
            start_day = parse_day(start, "--from") if start else None
            end_day = parse_day(end, "--to") if end else None
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        if start_day and end_day and start_day > end_day:
            raise CommandError(f"--from ({start_day}) is after --to ({end_day}).")
        began = time.monotonic()
        rows = rebuild_rollups(start=start_day, end=end_day)
        self.stdout.write(f"rebuilt {rows} roll-up rows ({start_day or 'first day'} to {end_day or 'last day'}) "
                          f"in {time.monotonic() - began:.1f} s")
