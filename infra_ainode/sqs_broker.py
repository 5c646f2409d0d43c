"""kombu's SQS transport, with each message sent as one signed HTTP request instead of through boto3.

A web process sends one SQS message per admitted job. Through boto3, SendMessage cost about 2.3 ms of CPU per
message (bench/admission.py, PostgreSQL + moto): botocore rebuilds and sanitises its user-agent string character
by character, runs its event hooks, deep-copies and validates the parameters, signs, and parses the answer, for a
request whose shape never changes. Here a channel's clients send messages themselves: SQS's JSON protocol
(`AmazonSQS.SendMessage`, as botocore speaks it), signed with Signature Version 4 using the client's own
credentials, region and endpoint, on one connection per thread, kept alive where the server allows it.

Everything else (creating and finding queues, receiving, deleting, changing visibility) is kombu's, through
boto3. Where botocore would do something this sender does not (a proxy, a client certificate, no credentials, no
certificate check), messages go through boto3 as before.

The consumer's polling survives an outage of the SQS server (kombu's own stops for good): a poll that failed is
tried again with growing pauses, and a queue whose poll never came back (its answer raised inside kombu's callback
chain, which then never schedules the next poll) is polled again by a watchdog on the worker's event loop.

Failures look as boto3's do, so kombu and Celery treat them alike: an error answer raises botocore's ClientError,
a connection that cannot be made raises EndpointConnectionError (one of kombu's connection errors, which Celery's
publish retries). Throttling, 5xx answers and broken connections are tried again, up to ATTEMPTS in all. A message
sent twice is harmless: the worker's claim of a job is a conditional update, so a second delivery runs nothing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import random
import ssl
import threading
import time
import urllib.request
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ChecksumError, ClientError, EndpointConnectionError
from botocore.httpsession import get_cert_path
from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection
from kombu.transport import SQS

logger = logging.getLogger(__name__)

TARGET = "AmazonSQS.SendMessage"
CONTENT_TYPE = "application/x-amz-json-1.0"
ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "sqs"
# Tried again as botocore's standard retry mode does: 3 attempts in all, on these codes and statuses and on broken
# connections. The pauses are shorter (a random one of up to 0.1 s, then 0.2 s; botocore's last up to seconds): an
# admission's request waits for them, and Celery's publish retries a connection error once more on top.
ATTEMPTS = 3
BACKOFF_SECONDS = 0.05
RETRIED_STATUSES = frozenset({500, 502, 503, 504})
RETRIED_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete",  # transient
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException", "TooManyRequestsException",
    "ProvisionedThroughputExceededException", "TransactionInProgressException", "RequestLimitExceeded",
    "BandwidthLimitExceeded", "LimitExceededException", "RequestThrottled", "SlowDown", "EC2ThrottledException",
})


def _json_default(value: Any) -> str:
    """Blobs (a message attribute's BinaryValue) travel as base64 in SQS's JSON protocol."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} cannot be sent to SQS")


class Signer:
    """Signature Version 4 for SQS's JSON protocol: the `Authorization` header of one POST to the endpoint's path.
    The signing key (four HMACs) is kept per secret and day."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._key: tuple[tuple[str, str], bytes] | None = None

    def headers(self, *, host: str, path: str, body: bytes, access_key: str, secret_key: str, token: str | None,
                now: datetime) -> dict[str, str]:
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers = {"content-type": CONTENT_TYPE, "host": host, "x-amz-date": amz_date, "x-amz-target": TARGET,
                   "x-amzn-query-mode": "true"}
        if token:
            headers["x-amz-security-token"] = token
        names = sorted(headers)
        signed = ";".join(names)
        canonical = "\n".join([
            "POST", path, "", "".join(f"{name}:{headers[name]}\n" for name in names), signed,
            hashlib.sha256(body).hexdigest(),
        ])
        scope = f"{day}/{self.region}/{SERVICE}/aws4_request"
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed}, "
                                    f"Signature={signature}")
        return headers

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        if self._key is not None and self._key[0] == (secret_key, day):
            return self._key[1]
        key = f"AWS4{secret_key}".encode()
        for part in (day, self.region, SERVICE, "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        self._key = ((secret_key, day), key)
        return key


class SignedSender:
    """SendMessage for one boto3 SQS client, sent by hand; None from `for_client` where boto3 must send it."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._credentials = client._request_signer._credentials  # as kombu reads them (Channel._new_release_client)
        self._url = client.meta.endpoint_url
        parts = urlsplit(self._url)
        self._https = parts.scheme == "https"
        self._address = (parts.hostname, parts.port or (443 if self._https else 80))
        self._host = parts.netloc
        self._path = parts.path or "/"
        config = client.meta.config
        self._timeouts = (config.connect_timeout, config.read_timeout)
        self._signer = Signer(client.meta.region_name)
        # The certificates botocore would check the endpoint's against (AWS_CA_BUNDLE, else its default bundle).
        verify = client._endpoint.http_session._verify
        self._tls = ssl.create_default_context(cafile=get_cert_path(verify)) if self._https else None
        self._local = threading.local()

    @classmethod
    def for_client(cls, client: Any) -> SignedSender | None:
        config = client.meta.config
        scheme = urlsplit(client.meta.endpoint_url).scheme
        if (client._request_signer._credentials is None or config.proxies or config.client_cert
                or client._endpoint.http_session._verify is False  # certificates not checked: boto3 does that
                or scheme not in ("http", "https") or _proxied(client.meta.endpoint_url)):
            return None
        return cls(client)

    def send_message(self, **params: Any) -> dict[str, Any]:
        body = json.dumps(params, default=_json_default).encode()  # byte for byte as botocore writes it
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status, answer_headers, answer = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                if attempt == ATTEMPTS:
                    raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
            else:
                if status == 200:
                    return self._sent(params, answer)
                error = self._error(status, answer_headers, answer)
                retried = status in RETRIED_STATUSES or error.response["Error"]["Code"] in RETRIED_CODES
                if attempt == ATTEMPTS or not retried:
                    raise error
            time.sleep(random.random() * BACKOFF_SECONDS * 2 ** attempt)
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> tuple[int, http.client.HTTPMessage, bytes]:
        credentials = self._credentials.get_frozen_credentials()  # refreshes credentials that expire
        headers = self._signer.headers(host=self._host, path=self._path, body=body,
                                       access_key=credentials.access_key, secret_key=credentials.secret_key,
                                       token=credentials.token, now=datetime.now(timezone.utc))
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        try:
            connection.request("POST", self._path, body, headers)
            response = connection.getresponse()
            answer = response.read()
        except BaseException:
            connection.close()
            self._local.connection = None
            raise
        if response.will_close:
            connection.close()
            self._local.connection = None
        return response.status, response.headers, answer

    def _connect(self) -> http.client.HTTPConnection:
        host, port = self._address
        connect_timeout, read_timeout = self._timeouts
        if self._https:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        connection.connect()
        connection.sock.settimeout(read_timeout)
        return connection

    def _sent(self, params: dict[str, Any], answer: bytes) -> dict[str, Any]:
        try:
            result = json.loads(answer)
        except ValueError:
            raise self._error(200, http.client.HTTPMessage(), answer) from None
        expected = hashlib.md5(params.get("MessageBody", "").encode()).hexdigest()
        if result.get("MD5OfMessageBody") != expected:
            raise ChecksumError(checksum_type="MD5", expected_checksum=expected,
                                actual_checksum=result.get("MD5OfMessageBody"))
        result["ResponseMetadata"] = {"HTTPStatusCode": 200}
        return result

    @staticmethod
    def _error(status: int, headers: http.client.HTTPMessage, answer: bytes) -> ClientError:
        """The answer as botocore's ClientError: its code from x-amzn-query-error (the query protocol's code, as
        botocore reads it for SQS) or the JSON body's __type."""
        try:
            data = json.loads(answer)
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        code = (headers.get("x-amzn-query-error") or "").split(";")[0]
        if not code:
            code = str(data.get("__type") or data.get("code") or status).rsplit("#", 1)[-1]
        message = data.get("message") or data.get("Message") or answer[:200].decode("utf-8", errors="replace")
        return ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage")


def _proxied(url: str) -> bool:
    """Whether the environment sends requests to `url` through a proxy (botocore would honour it)."""
    parts = urlsplit(url)
    return parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(parts.hostname or "")


class _SendingClient:
    """A boto3 SQS client whose `send_message` goes through a SignedSender; everything else is the client's."""

    def __init__(self, client: Any, sender: SignedSender) -> None:
        self._client = client
        self.send_message = sender.send_message

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# A failed poll is tried again after this pause, doubled after each failure in a row up to the most.
POLL_RETRY_FIRST_SECONDS = 0.5
POLL_RETRY_MAX_SECONDS = 5.0
# How often the watchdog looks, and how long past its long poll a queue's poll may stay unanswered.
WATCHDOG_SECONDS = 5.0
STALL_MARGIN_SECONDS = 10.0


class _PollingConnection(AsyncSQSConnection):
    """kombu's asynchronous SQS client, except that an error answer to a poll is a failed poll, not an exception
    raised inside the worker's event loop: there it ends the consumer ("Unrecoverable error"), and a server that
    is restarting answers errors for a moment (a queue it does not know yet)."""

    def _on_list_ready(self, parent: Any, markers: Any, operation: str, response: Any) -> Any:
        try:
            return super()._on_list_ready(parent, markers, operation, response)
        except Exception as exc:  # kombu raises a bare Exception for an error status
            logger.warning("SQS: %s failed: %s", operation, exc)
            return []


class Channel(SQS.Channel):
    """kombu's channel, whose SQS clients send messages through a SignedSender each, and whose polling outlives an
    outage of the server."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The client and its sending form, per queue: kombu keeps one client per queue (and one for all queues not
        # predefined), but makes a new one when STS credentials expire.
        self._sending_clients: dict[str | None, tuple[Any, Any]] = {}
        self._poll_failures: dict[str, int] = {}
        self._polled_at: dict[str, float] = {}
        # When each queue's poll loop last moved on by itself (the watchdog's revivals do not count): the worker's
        # liveness file is kept fresh only while every queue's loop moves (infra_ainode/celery.py).
        self._looped_at: dict[str, float] = {}
        self._watchdog: Any = None
        super().__init__(*args, **kwargs)

    def asynsqs(self, queue: str | None = None) -> AsyncSQSConnection:
        connection = super().asynsqs(queue)
        # kombu makes and caches the client itself (with its predefined queues' and STS' rules); only its poll's
        # answer differs, so the class is ours, the state is kombu's.
        connection.__class__ = _PollingConnection
        return connection

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        self._polled_at[queue] = self._looped_at[queue] = time.monotonic()
        consumer = super().basic_consume(queue, *args, **kwargs)
        if self.hub and self._watchdog is None:
            self._watchdog = self.hub.call_repeatedly(WATCHDOG_SECONDS, self._revive_stalled_polls)
        return consumer

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        super().close()

    def _on_messages_ready(self, queue: str, qname: str, messages: Any) -> int:
        # kombu's asynchronous client answers a poll that timed out or met a server error (a server that is down
        # included) with an empty list instead of the parsed answer: no messages, and a failure to back off from.
        if not isinstance(messages, dict):
            self._poll_failures[queue] = self._poll_failures.get(queue, 0) + 1
            return 0
        if self._poll_failures.pop(queue, None):
            logger.info("SQS: polling queue %s works again", queue)
        return super()._on_messages_ready(queue, qname, messages)

    def _loop1(self, queue: str, messages_fetched: Any = None) -> None:
        self._polled_at[queue] = self._looped_at[queue] = time.monotonic()
        failures = self._poll_failures.get(queue, 0)
        if failures:
            pause = min(POLL_RETRY_FIRST_SECONDS * 2 ** (failures - 1), POLL_RETRY_MAX_SECONDS)
            if failures == 1:
                logger.warning("SQS: polling queue %s failed; trying again, at most every %.0f s", queue,
                               POLL_RETRY_MAX_SECONDS)
            self.hub.call_later(pause, self._schedule_queue, queue)
            return
        super()._loop1(queue, messages_fetched)

    def _revive_stalled_polls(self) -> None:
        """Poll again each consumed queue whose last poll ended longer ago than a long poll and a margin: its
        answer raised inside kombu's callback chain (an error answer, a queue the server lost), which then never
        schedules the next poll, and the worker would consume nothing more while looking alive."""
        stalled_after = (self.wait_time_seconds or 0) + STALL_MARGIN_SECONDS
        now = time.monotonic()
        for queue in list(self._active_queues):
            if now - self._polled_at.get(queue, now) > stalled_after:
                logger.warning("SQS: no poll of queue %s has ended for %.0f s; polling it again", queue,
                               now - self._polled_at[queue])
                self._polled_at[queue] = now
                self._queue_cache.pop(self.canonical_queue_name(queue), None)  # the server may have lost it
                self._schedule_queue(queue)

    def consuming(self) -> bool:
        """Whether every consumed queue's poll loop has moved on lately: within a long poll, the watchdog's look
        and two margins (a poll that failed moves on too: the worker is trying; a full prefetch loops without
        polling). False once the watchdog's revival has not helped either."""
        bound = (self.wait_time_seconds or 0) + WATCHDOG_SECONDS + 2 * STALL_MARGIN_SECONDS
        now = time.monotonic()
        return all(now - self._looped_at.get(queue, now) <= bound for queue in list(self._active_queues))

    def sqs(self, queue: str | None = None) -> Any:
        client = super().sqs(queue)
        cached = self._sending_clients.get(queue)
        if cached is None or cached[0] is not client:
            sender = SignedSender.for_client(client)
            sending = client if sender is None else _SendingClient(client, sender)
            cached = self._sending_clients[queue] = (client, sending)
        return cached[1]


class Transport(SQS.Transport):
    Channel = Channel

