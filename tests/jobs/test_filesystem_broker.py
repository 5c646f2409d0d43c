"""The development broker (kombu's filesystem transport) must not lose a message that a worker polls for while it
is being written."""
import subprocess
import sys
import textwrap

from tests.support import REPO_ROOT

CONSUMER = textwrap.dedent("""
    import sys, time
    import infra_ainode.celery  # noqa: F401 - installs our filesystem transport, as in a worker
    from kombu import Connection, Exchange, Queue

    folder, expected = sys.argv[1], int(sys.argv[2])
    options = {"data_folder_in": folder, "data_folder_out": folder, "control_folder": folder + "/control",
               "polling_interval": 0}
    queue = Queue("race", Exchange("race"), routing_key="race")
    got, errors = 0, 0
    with Connection("filesystem://", transport_options=options) as connection:
        inbox = connection.SimpleQueue(queue)
        deadline = time.monotonic() + 60
        while got < expected and time.monotonic() < deadline:
            try:
                message = inbox.get(timeout=0.01)
            except inbox.Empty:
                continue
            except Exception:
                errors += 1
                continue
            message.ack()
            got += 1
    print(got, errors)
""")


def test_no_message_is_lost_to_a_consumer_polling_while_it_is_written(short_tmp):
    from kombu import Connection, Exchange, Queue

    import infra_ainode.celery  # noqa: F401

    folder = short_tmp / "race"
    (folder / "control").mkdir(parents=True)
    count = 1000
    consumer = subprocess.Popen([sys.executable, "-c", CONSUMER, str(folder), str(count)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, text=True)
    queue = Queue("race", Exchange("race"), routing_key="race")
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder / "control")}
    with Connection("filesystem://", transport_options=options) as connection:
        producer = connection.Producer()
        for number in range(count):
            producer.publish({"n": number}, exchange=queue.exchange, routing_key="race", declare=[queue])
    out, _ = consumer.communicate(timeout=90)
    got, errors = map(int, out.split())
    assert (got, errors) == (count, 0)
