"""`ainode webhooks ...` and `ainode schedules ...`: a user's webhook endpoints, their deliveries, and schedules.
Registered on the main parser by `add_commands`; each handler returns an exit code like the others."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from . import output
from .client import Client

EVENT_TYPES = ("job.succeeded", "job.failed", "job.timed_out", "job.cancelled", "budget.threshold",
               "quota.threshold")
Handler = Callable[[Client, argparse.Namespace], int]


def _show(body: Any, args: argparse.Namespace, columns: list[tuple[str, str]]) -> int:
    if args.json:
        output.as_json(body)
    else:
        output.table(body if isinstance(body, list) else [body], columns)
        if isinstance(body, dict) and body.get("secret"):
            print(f"secret (shown once, keep it to verify signatures): {body['secret']}")
    return 0


WEBHOOK_COLUMNS = [("id", "ID"), ("url", "URL"), ("eventTypes", "EVENTS"), ("active", "ACTIVE")]
DELIVERY_COLUMNS = [("id", "ID"), ("eventType", "EVENT"), ("status", "STATUS"), ("attempts", "ATTEMPTS"),
                    ("lastStatusCode", "LAST"), ("createdAt", "CREATED")]
SCHEDULE_COLUMNS = [("id", "ID"), ("name", "NAME"), ("timing", "WHEN"), ("overlap", "OVERLAP"), ("paused", "PAUSED"),
                    ("nextRunAt", "NEXT RUN")]


def cmd_webhooks(client: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        return _show(client.pages("/api/v1/webhooks/"), args, WEBHOOK_COLUMNS)
    if args.action == "add":
        body = {"url": args.target, "eventTypes": args.events or list(EVENT_TYPES[:4])}
        return _show(client.post("/api/v1/webhooks/", body).body, args, WEBHOOK_COLUMNS)
    if args.action == "rm":
        client.request("DELETE", f"/api/v1/webhooks/{args.target}/")
        return 0
    if args.action == "rotate":
        return _show(client.post(f"/api/v1/webhooks/{args.target}/rotate-secret").body, args, WEBHOOK_COLUMNS)
    if args.action == "deliveries":
        return _show(client.pages("/api/v1/deliveries/", limit=50, status=args.status), args, DELIVERY_COLUMNS)
    return _show(client.post(f"/api/v1/deliveries/{args.target}/redeliver").body, args, DELIVERY_COLUMNS)


def schedules_command(function_id: Callable[[Client, str], str]) -> Handler:
    """The handler of `ainode schedules`; `function_id` turns a function's name or id into its id."""

    def cmd_schedules(client: Client, args: argparse.Namespace) -> int:
        if args.action == "list":
            rows = client.pages("/api/v1/schedules/")
        elif args.action == "add":
            body = {"name": args.name or args.target, "functionId": function_id(client, args.target),
                    "overlap": args.overlap, "inputData": json.loads(args.input) if args.input else None}
            body.update({"cron": args.cron} if args.cron else {"intervalSeconds": args.every})
            rows = [client.post("/api/v1/schedules/", body).body]
        elif args.action == "rm":
            client.request("DELETE", f"/api/v1/schedules/{args.target}/")
            return 0
        else:  # pause, resume
            rows = [client.post(f"/api/v1/schedules/{args.target}/{args.action}").body]
        shown = [{**row, "timing": row["cron"] or f"every {row['intervalSeconds']} s"} for row in rows]
        return _show(rows if args.json else shown, args, SCHEDULE_COLUMNS)

    return cmd_schedules


def add_commands(command: Callable[[str, Handler, str], argparse.ArgumentParser],
                 function_id: Callable[[Client, str], str]) -> None:
    webhooks = command("webhooks", cmd_webhooks, "your webhook endpoints and their deliveries")
    webhooks.add_argument("action", choices=("list", "add", "rm", "rotate", "deliveries", "redeliver"))
    webhooks.add_argument("target", nargs="?", metavar="URL|ID",
                          help="add: the URL; rm, rotate: the endpoint's id; redeliver: the delivery's id")
    webhooks.add_argument("events", nargs="*", metavar="EVENT", help=f"add: some of {', '.join(EVENT_TYPES)} "
                                                                     "(default: the job events)")
    webhooks.add_argument("--status", choices=("pending", "delivered", "dead"), help="deliveries: only these")

    schedules = command("schedules", schedules_command(function_id), "run a function on a schedule")
    schedules.add_argument("action", choices=("list", "add", "pause", "resume", "rm"))
    schedules.add_argument("target", nargs="?", metavar="FUNCTION|ID",
                           help="add: the function's name or id; pause, resume, rm: the schedule's id")
    when = schedules.add_mutually_exclusive_group()
    when.add_argument("--cron", help="add: five cron fields, UTC, e.g. '0 3 * * *'")
    when.add_argument("--every", type=int, metavar="SECONDS", help="add: an interval")
    schedules.add_argument("--input", metavar="JSON", help="add: the runs' fixed input")
    schedules.add_argument("--name", help="add: the schedule's name (default: the function's)")
    schedules.add_argument("--overlap", choices=("skip", "queue"), default="skip",
                           help="add: a tick while the previous run is unfinished is skipped (default) or queued")
