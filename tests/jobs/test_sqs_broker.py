"""SQS messages go out as one signed request each (infra_ainode/sqs_broker.py), against the real moto_server: signed
as botocore signs them, received by kombu's consumer and by boto3 as sent, failing as boto3 fails."""
from __future__ import annotations

import http.client
import socket
import uuid
from datetime import datetime, timezone

import boto3
import botocore.auth
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from infra_ainode import sqs_broker
from infra_ainode.sqs_broker import SignedSender

NOW = datetime(2026, 11, 29, 14, 30, 5, tzinfo=timezone.utc)


def _client(endpoint: str, *, region: str = "us-east-1", token: str | None = None):
    return boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY",
                         aws_session_token=token, region_name=region).client("sqs", endpoint_url=endpoint)


@pytest.fixture
def moto_url(moto_endpoint) -> str:
    host, port = moto_endpoint
    return f"http://{host}:{port}"


@pytest.fixture
def queue_url(moto_url) -> str:
    client = _client(moto_url)
    url = client.create_queue(QueueName=f"t{uuid.uuid4().hex[:12]}-signed")["QueueUrl"]
    yield url
    client.delete_queue(QueueUrl=url)


class _Captured(Exception):
    pass


def _botocores_request(client, monkeypatch, **params):
    """The request boto3 would send for SendMessage(**params), signed at NOW, caught before it leaves."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    captured = {}

    def catch(request, **kwargs):
        captured["request"] = request
        raise _Captured

    client.meta.events.register("before-send.sqs.SendMessage", catch)
    with pytest.raises(_Captured):
        client.send_message(**params)
    return captured["request"]


@pytest.mark.parametrize("endpoint, region, token", [
    ("https://sqs.eu-west-1.amazonaws.com", "eu-west-1", None),
    ("http://127.0.0.1:5055", "us-east-1", "FwoGZXIvYXdzEJr//////////session-token"),
])
def test_a_message_is_signed_exactly_as_botocore_signs_it(monkeypatch, endpoint, region, token):
    client = _client(endpoint, region=region, token=token)
    params = {"QueueUrl": f"{endpoint}/123456789012/jobs", "MessageBody": "eyJib2R5IjogImhpIn0=",
              "MessageAttributes": {"kind": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}}}
    theirs = _botocores_request(client, monkeypatch, **params)
    sender = SignedSender(client)
    ours = sender._signer.headers(host=sender._host, path=sender._path, body=theirs.body, access_key="AKIDEXAMPLE",
                                  secret_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCY", token=token, now=NOW)
    assert ours["authorization"] == theirs.headers["Authorization"].decode()
    for name in ("content-type", "x-amz-date", "x-amz-target", "x-amzn-query-mode", "x-amz-security-token"):
        assert ours.get(name) == (theirs.headers[name].decode() if name in theirs.headers else None), name


def test_the_body_is_botocores(monkeypatch):
    client = _client("https://sqs.us-east-1.amazonaws.com")
    params = {"QueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/jobs", "MessageBody": "x" * 40,
              "DelaySeconds": 3, "MessageAttributes": {"a": {"DataType": "Binary", "BinaryValue": b"\x01\x02"},
                                                       "b": {"DataType": "String", "StringValue": "é"}}}
    theirs = _botocores_request(client, monkeypatch, **params)
    sent = []
    sender = SignedSender(client)

    def catch(body):
        sent.append(body)
        raise _Captured

    monkeypatch.setattr(sender, "_post", catch)
    with pytest.raises(_Captured):
        sender.send_message(**params)
    assert sent == [theirs.body]


def test_what_is_sent_is_what_boto3_receives(moto_url, queue_url):
    client = _client(moto_url)
    answer = SignedSender(client).send_message(
        QueueUrl=queue_url, MessageBody="héllo",
        MessageAttributes={"blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xfe"},
                           "text": {"DataType": "String", "StringValue": "plain"}})
    received = client.receive_message(QueueUrl=queue_url, MessageAttributeNames=["All"], WaitTimeSeconds=1)
    [message] = received["Messages"]
    assert message["MessageId"] == answer["MessageId"]
    assert message["Body"] == "héllo"
    assert message["MessageAttributes"]["blob"]["BinaryValue"] == b"\x00\x01\xfe"
    assert message["MessageAttributes"]["text"]["StringValue"] == "plain"


def test_kombus_consumer_receives_what_the_channel_publishes(moto_url, moto_endpoint):
    from kombu import Connection, Exchange, Queue

    import infra_ainode.celery  # noqa: F401 - names our transport for sqs://, as in every process

    host, port = moto_endpoint
    options = {"region": "us-east-1", "is_secure": False, "queue_name_prefix": f"t{uuid.uuid4().hex[:12]}-",
               "wait_time_seconds": 1, "polling_interval": 0}
    queue = Queue("signed", Exchange("signed"), routing_key="signed")
    with Connection(f"sqs://x:x@{host}:{port}", transport_options=options) as connection:
        assert isinstance(connection.default_channel, sqs_broker.Channel)
        producer = connection.Producer()
        for number in range(3):
            producer.publish({"n": number, "text": "ünïcode"}, exchange=queue.exchange, routing_key="signed",
                             declare=[queue])
        assert isinstance(connection.default_channel.sqs(), sqs_broker._SendingClient)
        inbox = connection.SimpleQueue(queue)
        got = []
        for _ in range(3):
            message = inbox.get(timeout=10)
            got.append(message.payload)
            message.ack()
        inbox.close()
        connection.default_channel.sqs().delete_queue(QueueUrl=connection.default_channel._new_queue("signed"))
    assert sorted(got, key=lambda payload: payload["n"]) == [{"n": n, "text": "ünïcode"} for n in range(3)]


def test_an_error_is_boto3s_clienterror_with_boto3s_code(moto_url):
    client = _client(moto_url)
    missing = f"{moto_url}/123456789012/no-such-queue-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ClientError) as boto3s:
        client.send_message(QueueUrl=missing, MessageBody="x")
    with pytest.raises(ClientError) as ours:
        SignedSender(client).send_message(QueueUrl=missing, MessageBody="x")
    assert ours.value.response["Error"]["Code"] == boto3s.value.response["Error"]["Code"]
    assert ours.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_an_endpoint_that_does_not_answer_raises_kombus_connection_error(monkeypatch):
    from kombu.transport.SQS import Transport

    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(sqs_broker, "BACKOFF_SECONDS", 0.001)
    with pytest.raises(EndpointConnectionError) as raised:
        SignedSender(_client(f"http://127.0.0.1:{port}")).send_message(QueueUrl="q", MessageBody="x")
    assert isinstance(raised.value, Transport.connection_errors)


def test_throttling_and_server_errors_are_tried_again_and_other_errors_are_not(monkeypatch, moto_url, queue_url):
    monkeypatch.setattr(sqs_broker, "BACKOFF_SECONDS", 0.001)
    sender = SignedSender(_client(moto_url))
    real_post, calls = sender._post, []
    failures = [(503, b'{"__type": "ServiceUnavailable", "message": "busy"}'),
                (400, b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "slow down"}')]

    def failing_first(body):
        calls.append(body)
        if failures:
            status, answer = failures.pop(0)
            return status, http.client.HTTPMessage(), answer
        return real_post(body)

    monkeypatch.setattr(sender, "_post", failing_first)
    assert sender.send_message(QueueUrl=queue_url, MessageBody="third time")["MessageId"]
    assert len(calls) == 3

    calls.clear()
    with pytest.raises(ClientError):
        sender.send_message(QueueUrl=f"{moto_url}/123456789012/no-such-queue", MessageBody="x")
    assert len(calls) == 1


def test_boto3_sends_where_the_environment_names_a_proxy(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert SignedSender.for_client(_client("http://127.0.0.1:5055")) is None
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert SignedSender.for_client(_client("http://127.0.0.1:5055")) is not None
