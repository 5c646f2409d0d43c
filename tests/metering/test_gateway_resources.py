"""What a script can make its gateway hold is bounded: connections (a per-job cap), time (a socket timeout on every
read and write), memory (a call's slot is taken before its body is read), and what reaches the node (option types
and sizes are checked). Odd bodies get a 400, never a dropped connection.
"""
import os
import threading
import time

import pytest

from tests.metering.helpers import RAW_HTTP, assert_billed_as_node_counted

ONE_REAL_CALL = '''
import ai_client


def real_call():
    return ai_client.generate("Say hi.", temperature=0, seed=42, max_tokens=3)
'''

ODD_REQUESTS = RAW_HTTP + ONE_REAL_CALL + '''
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def main(event, context):
    answers = {}
    for name, path, body in [
        ("stop_not_text", "/v1/chat/completions", {**CHAT, "stop": {"a": 1}}),
        ("stop_too_many", "/v1/chat/completions", {**CHAT, "stop": ["x"] * 100}),
        ("stop_too_long", "/api/chat", {"messages": CHAT["messages"], "options": {"stop": ["y" * 100000]}}),
        ("temperature_text", "/v1/completions", {"prompt": "Hi", "temperature": "hot"}),
        ("temperature_huge", "/api/generate", {"prompt": "Hi", "options": {"temperature": 1e300}}),
        ("seed_float", "/api/generate", {"prompt": "Hi", "options": {"seed": 1.5}}),
        ("top_k_negative", "/v1/completions", {"prompt": "Hi", "top_k": -3}),
        ("top_p_bool", "/v1/completions", {"prompt": "Hi", "top_p": True}),
        ("content_part_not_text", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}),
        ("content_part_list", "/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "text", "text": ["a", "b"]}]}]}),
        ("stream_options_list", "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": [1]}),
    ]:
        status, _, payload = send("POST", path, body)
        answers[name] = [status, json.loads(payload)["code"]]
    deep = b"[" * 200000 + b"]" * 200000
    status, _, payload = send("POST", "/api/chat", raw=deep)
    answers["deeply_nested"] = [status, json.loads(payload)["code"]]
    real_call()  # the gateway still serves
    return answers
'''


def test_odd_options_and_bodies_are_refused_with_400_before_the_node_sees_them(run_script, node):
    job = run_script(ODD_REQUESTS)

    assert_billed_as_node_counted(job, node)
    answers = job.result
    for name in ("stop_not_text", "stop_too_many", "stop_too_long", "temperature_text", "temperature_huge",
                 "seed_float", "top_k_negative", "top_p_bool"):
        assert answers[name] == [400, "invalid_option"], name
    for name in ("content_part_not_text", "content_part_list", "stream_options_list"):
        assert answers[name] == [400, "invalid_request"], name
    assert answers["deeply_nested"] == [400, "malformed_json"]
    assert job.llm_calls == 1 and len(node.answers) == 1  # only the real call reached the node


CONNECTIONS = RAW_HTTP + ONE_REAL_CALL + '''
import time


def main(event, context):
    sockets, answers = [], []
    for _ in range(event["connections"]):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(GATEWAY_SOCKET)
        sockets.append(sock)
    time.sleep(0.5)
    for sock in sockets:  # silent connections: only a refused one gets an answer (at once)
        sock.settimeout(0.2)
        try:
            answers.append(sock.recv(4096).split(b" ", 2)[1].decode() or "closed")
        except TimeoutError:
            answers.append("open")
        except (OSError, IndexError):
            answers.append("closed")
    for sock in sockets:
        sock.close()
    time.sleep(0.5)
    real_call()
    return answers
'''


def test_a_job_may_hold_only_so_many_connections_on_its_gateway(run_script, node, settings):
    settings.GATEWAY_MAX_CONNECTIONS = 8
    job = run_script(CONNECTIONS.replace("import http.client", "import http.client, socket"),
                     input_data={"connections": 14})

    assert_billed_as_node_counted(job, node)
    assert job.result == ["open"] * 8 + ["503"] * 6
    assert job.llm_calls == 1


SILENT = RAW_HTTP + '''
import time


def wait_for_the_gateway(sock):
    """How the gateway treats a connection that went silent: ("closed" or its answer's status, seconds)."""
    started = time.monotonic()
    sock.settimeout(15)
    try:
        data = sock.recv(4096)
        outcome = data.split(b" ", 2)[1].decode() if data else "closed"
    except TimeoutError:
        outcome = "still open"
    return [outcome, round(time.monotonic() - started, 1)]


def main(event, context):
    half_head = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half_head.connect(GATEWAY_SOCKET)
    half_head.sendall(b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\n")
    half_body = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half_body.connect(GATEWAY_SOCKET)
    half_body.sendall(b"POST /api/generate HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Length: 500\\r\\n\\r\\n{\\"prompt\\"")
    return {"half_head": wait_for_the_gateway(half_head), "half_body": wait_for_the_gateway(half_body)}
'''


def test_a_connection_that_goes_silent_half_way_is_let_go_after_the_socket_timeout(run_script, node, settings):
    settings.GATEWAY_SOCKET_TIMEOUT = 2
    job = run_script(SILENT.replace("import http.client", "import http.client, socket"))

    assert job.status == "succeeded", job.stderr
    assert job.result["half_head"][0] == "closed" and job.result["half_head"][1] < 6
    assert job.result["half_body"][0] in ("408", "closed") and job.result["half_body"][1] < 6
    assert node.answers == []


FLOOD = RAW_HTTP + '''
import threading
import time


def long_call():
    send("POST", "/v1/completions", {"prompt": "1, 2, 3, 4, 5,", "max_tokens": 300, "stream": True,
                                     "temperature": 0})


def main(event, context):
    threading.Thread(target=long_call, daemon=True).start()  # holds the job's only call slot
    time.sleep(1.5)
    content = "sea " * 225000  # 900 KB: within the body limit
    body = json.dumps({"messages": [{"role": "user", "content": content}], "stream": False}).encode()
    payload = b"POST /api/chat HTTP/1.1\\r\\nHost: gateway\\r\\nContent-Type: application/json\\r\\n" + \\
        b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body
    flood = []
    for _ in range(event["connections"]):
        try:  # the container's nofile limit may stop the flood early: it is big enough all the same
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(GATEWAY_SOCKET)
        except OSError:
            break
        sock.setblocking(False)
        flood.append([sock, 0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(sent < len(payload) for _, sent in flood):
        for entry in flood:
            if entry[1] < len(payload):
                try:
                    entry[1] += entry[0].send(payload[entry[1]:entry[1] + 262144])
                except BlockingIOError:
                    pass
                except OSError:
                    entry[1] = len(payload)  # refused and closed by the gateway
        time.sleep(0.01)
    time.sleep(3)  # hold them all while the gateway would hold their bodies
    return len(flood)
'''


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.timeout(240)
def test_the_workers_memory_stays_flat_whatever_a_script_sends_its_gateway(run_script, node, settings):
    """The gateway runs in the worker's process (here, the test's): a flood of large requests parked behind a busy
    call slot must not grow it by more than 100 MB."""
    settings.GATEWAY_MAX_CONCURRENT_CALLS = 1
    settings.AI_CALL_TIMEOUT = 8
    baseline, peak, done = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        job = run_script(FLOOD.replace("import http.client", "import http.client, socket"),
                         input_data={"connections": 200}, memory_mb=512, timeout_seconds=60)
    finally:
        done.set()
        sampler.join()

    assert job.status == "succeeded", job.stderr[-2000:]
    assert job.result > 100  # the script did open its flood of connections
    growth_mb = (peak[0] - baseline) / 2 ** 20
    assert growth_mb < 100, f"the worker grew by {growth_mb:.0f} MB"
