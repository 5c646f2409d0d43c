"""Check the LLMCall ledger, the jobs' totals and the daily roll-ups against their signed receipts."""
import time

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import DomainError
from core.ranges import parse_day

from ...metering.audit import verify_ledger


class Command(BaseCommand):
    help = ("Walk every job's chain of receipts (or those of the jobs created from --since on) and name the first "
            "ledger row or receipt that was edited, deleted, inserted or reordered, and the jobs and roll-ups whose "
            "figures no longer match their receipts. Exits 1 when it finds anything.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--since", help="first day (YYYY-MM-DD) of the jobs to check; default: all")
        parser.add_argument("--all-signatures", action="store_true",
                            help="check every receipt's signature, not only where each chain is anchored")

    def handle(self, *args, since: str | None, all_signatures: bool, **options) -> None:
        try:
            day = parse_day(since, "--since") if since else None
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        began = time.monotonic()
        audit = verify_ledger(since=day, signatures="all" if all_signatures else "anchors")
        seconds = time.monotonic() - began
        for finding in audit.findings:
            self.stdout.write(str(finding))
        self.stdout.write(f"{audit.receipts} receipts of {audit.jobs} jobs, {audit.signatures} signatures checked in "
                          f"{seconds:.1f} s: {len(audit.findings) or 'no'} problem(s)")
        if audit.findings:
            raise SystemExit(1)
