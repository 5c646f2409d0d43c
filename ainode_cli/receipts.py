"""`ainode receipts verify [JOB | --since DATE]`: check the API's receipts offline, as a customer.

It fetches the published public keys and the receipts (one job's chain, or every chain of the jobs created from
DATE on), then checks with nothing but the standard library: each receipt's text hashes to its hash and carries a
signature of a published key (ainode_cli.ed25519), each chain runs from 1 with no gap and each receipt names the
hash of the one before it, and each closed chain's job receipt covers all the others and their sums. Then it checks
that the API's own figures add up to the receipts: each job's result (tokens, calls, cost, receiptHash), and with
--since, the usage API's figures per day and the signed daily checkpoints (each job receipt is in its day's).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import urllib.parse
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from . import output
from .client import ApiError, Client
from .ed25519 import verify

GENESIS = "0" * 64
NANO = Decimal(10) ** 9
EXIT_USAGE = 2
EXIT_UNVERIFIED = 9  # a receipt, a chain or a figure did not verify


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    receipts = command("receipts", cmd_receipts, "verify your receipts offline against the published keys")
    receipts.add_argument("action", choices=("verify",))
    receipts.add_argument("job", metavar="JOB", nargs="?", help="one job's receipts (default: --since)")
    receipts.add_argument("--since", metavar="YYYY-MM-DD", help="every receipt of your jobs created from this day")


def cmd_receipts(client: Client, args: argparse.Namespace) -> int:
    if bool(args.job) == bool(args.since):
        print("ainode: receipts verify needs a JOB or --since DATE (one of them)", file=sys.stderr)
        return EXIT_USAGE
    keys = {key["keyId"]: base64.b64decode(key["publicKey"])
            for key in client.get("/api/v1/receipts/keys").body["keys"]}
    path = f"/api/v1/jobs/{args.job}/receipts" if args.job else "/api/v1/receipts/"
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for receipt in _every_page(client, path, {"since": args.since} if args.since else {}):
        chains[receipt["jobId"]].append(receipt)
    problems: list[str] = []
    sums_by_day: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    verified = []
    for job_id, chain in chains.items():
        found = check_chain(job_id, chain, keys, sums_by_day)
        found += _check_result(client, job_id, chain) if not found else []
        problems += found
        verified.append({"jobId": job_id, "receipts": len(chain), "ok": not found})
    if args.since:
        problems += _check_usage(client, args.since, sums_by_day)
        problems += _check_checkpoints(client, chains, keys)
    if args.json:
        output.as_json({"ok": not problems, "jobs": verified, "problems": problems})
    else:
        for problem in problems:
            print(f"FAILED {problem}")
        print(f"{sum(job['receipts'] for job in verified)} receipts of {len(verified)} jobs: "
              f"{'all verified' if not problems else f'{len(problems)} problem(s)'}")
    return EXIT_UNVERIFIED if problems else 0


def _every_page(client: Client, path: str, query: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    body = client.get(path, page_size=500, **query).body
    while True:
        items += body["results"]
        if not body.get("next"):
            return items
        link = urllib.parse.urlsplit(body["next"])  # the API's own link: follow it on our base URL
        body = client.request("GET", f"{link.path}?{link.query}", retry=True).body


def check_chain(job_id: str, chain: list[dict[str, Any]], keys: dict[str, bytes],
                sums_by_day: dict[str, list[int]]) -> list[str]:
    """The first problem of one job's chain (as a list: empty when it verifies), its per-day sums added up."""
    prev, hashes, bodies = GENESIS, [], []
    for number, receipt in enumerate(chain, start=1):
        where = f"job {job_id}, receipt {number}"
        text = receipt["receipt"].encode()
        if hashlib.sha256(text).hexdigest() != receipt["hash"]:
            return [f"{where}: its text does not hash to its hash (edited)"]
        key = keys.get(receipt["keyId"])
        if key is None or not verify(key, text, bytes.fromhex(receipt["signature"])):
            return [f"{where}: its signature does not verify with key {receipt['keyId']} (forged)"]
        body = json.loads(text)
        if (body["seq"], body["job"]) != (number, job_id):
            return [f"{where}: it says it is receipt {body['seq']} of job {body['job']} (missing or moved)"]
        if body["prev"] != prev:
            return [f"{where}: it does not follow receipt {number - 1} (inserted, removed or moved)"]
        if body["kind"] == "job" and (body["covers"] != hashes or any(
                body[name] != value for name, value in _sums(bodies).items())):
            return [f"{where}: the job receipt does not cover the receipts before it"]
        prev = receipt["hash"]
        hashes.append(prev)
        bodies.append(body)
    for body in bodies:
        if body["kind"] != "job":
            day = sums_by_day[body["day"]]
            one = _sums([body])
            day[0] += one["calls"]
            day[1] += one["promptTokens"]
            day[2] += one["completionTokens"]
            day[3] += one["amount"]
    return []


def _sums(bodies: list[dict[str, Any]]) -> dict[str, int]:
    """What call and correction receipts add up to (as the job receipt states it)."""
    sums = {"calls": 0, "unmeteredCalls": 0, "promptTokens": 0, "completionTokens": 0, "amount": 0}
    for body in bodies:
        if body["kind"] == "job":
            continue
        metered = body["promptTokens"] is not None and body["completionTokens"] is not None
        sums["calls"] += body["kind"] == "call"
        sums["unmeteredCalls"] += body["kind"] == "call" and not metered
        sums["promptTokens"] += body["promptTokens"] if metered else 0
        sums["completionTokens"] += body["completionTokens"] if metered else 0
        sums["amount"] += body["amount"] or 0
    return sums


def _check_result(client: Client, job_id: str, chain: list[dict[str, Any]]) -> list[str]:
    """The job's result must say what its receipts say."""
    result = client.get(f"/api/v1/jobs/{job_id}").body
    sums = _sums([json.loads(receipt["receipt"]) for receipt in chain])
    said = {"promptTokens": result["promptTokens"], "completionTokens": result["completionTokens"],
            "calls": result["llmCalls"], "unmeteredCalls": result["unmeteredCalls"],
            "amount": int(Decimal(result["cost"]) * NANO)}
    problems = [f"job {job_id}: its result's {name} is {value}, its receipts add up to {sums[name]}"
                for name, value in said.items() if sums[name] != value]
    closing = [receipt["hash"] for receipt in chain if receipt["kind"] == "job"]
    if result["receiptHash"] != (closing[0] if closing else ""):
        problems.append(f"job {job_id}: its result's receiptHash is not its job receipt's hash")
    return problems


def _check_usage(client: Client, since: str, sums_by_day: dict[str, list[int]]) -> list[str]:
    """The usage API's figures per day must be the receipts' sums (from `since` to the last day receipted)."""
    if not sums_by_day:
        return []
    last = max(sums_by_day)
    rows = _every_page(client, "/api/v1/usage/", {"from": since, "to": max(last, since), "group_by": "day"})
    problems = []
    usage = {row["day"]: [row["calls"], row["promptTokens"], row["completionTokens"],
                          int(Decimal(row["cost"]) * NANO)] for row in rows}
    for day in sorted(set(usage) | set(sums_by_day)):
        if usage.get(day, [0, 0, 0, 0]) != sums_by_day.get(day, [0, 0, 0, 0]):
            problems.append(f"usage of {day}: the usage API says calls, prompt, completion, amount "
                            f"{usage.get(day)}; the receipts add up to {sums_by_day.get(day)}")
    return problems


def _check_checkpoints(client: Client, chains: dict[str, list[dict[str, Any]]], keys: dict[str, bytes]) -> list[str]:
    """Each job receipt must be in the signed checkpoint of the day it closed (once that day is sealed)."""
    closed: dict[str, set[str]] = defaultdict(set)
    for chain in chains.values():
        for receipt in chain:
            if receipt["kind"] == "job":
                closed[json.loads(receipt["receipt"])["day"]].add(receipt["hash"])
    problems = []
    for day, hashes in sorted(closed.items()):
        try:
            checkpoint = client.get(f"/api/v1/receipts/days/{day}").body
        except ApiError as error:
            if error.status == 404:  # the day is not over yet
                continue
            raise
        text = checkpoint["checkpoint"].encode()
        key = keys.get(checkpoint["keyId"])
        if (hashlib.sha256(text).hexdigest() != checkpoint["hash"] or key is None
                or not verify(key, text, bytes.fromhex(checkpoint["signature"]))):
            problems.append(f"checkpoint of {day}: it does not verify")
        elif missing := hashes - set(json.loads(text)["jobs"]):
            problems.append(f"checkpoint of {day}: {len(missing)} job receipt(s) of that day are not in it")
    return problems
