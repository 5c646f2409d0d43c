"""Send the usage export's events (outbound.export) of the calls and jobs of a range of days: those never recorded
(the export was off, or set up since), and with --again the recorded ones once more (same ids: the receiver
deduplicates)."""
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.errors import DomainError
from core.ranges import DateRange, parse_day
from outbound import export

from ...usage_export import usage_in


class Command(BaseCommand):
    help = ("Export the usage of --from..--to (YYYY-MM-DD, both included) to USAGE_EXPORT_URL: one CloudEvent per "
            "model call and per ended job. Events already exported are left alone unless --again. The workers of "
            "OUTBOUND_QUEUE deliver them, each user's in order, after the events already waiting.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="start", required=True, help="first day (YYYY-MM-DD)")
        parser.add_argument("--to", dest="end", required=True, help="last day (YYYY-MM-DD)")
        parser.add_argument("--again", action="store_true", help="also send again what was exported already")

    def handle(self, *args, start: str, end: str, again: bool, **options) -> None:
        if not export.enabled():
            raise CommandError("USAGE_EXPORT_URL is not set: there is nowhere to export to.")
        try:
            span = DateRange(parse_day(start, "--from"), parse_day(end, "--to"))
        except DomainError as exc:
            raise CommandError(exc.detail) from None
        if span.start > span.end:
            raise CommandError(f"--from ({span.start}) is after --to ({span.end}).")
        added, sent_again = export.backfill(usage_in(span), again=again)
        self.stdout.write(f"{added} usage events added, {sent_again} sent again ({span.start} to {span.end}); the "
                          f"sweep hands them to the outbound workers")
