import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Function(models.Model):
    """A user's deployed script. Its code lives in immutable `FunctionVersion`s; updating code adds a version.

    Deleting a function hides it (`deleted_at`) but keeps its rows, because its jobs stay billable.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="functions")
    name = models.CharField(max_length=100)
    memory_mb = models.PositiveIntegerField()
    timeout_seconds = models.PositiveIntegerField()
    env = models.JSONField(default=dict, blank=True)
    default_model = models.CharField(max_length=200, blank=True)
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Models the script may call besides the job's own modelId."
    )
    token_budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Most tokens (prompt + completion) one job of this function may spend."
    )
    version = models.PositiveIntegerField(default=0, help_text="The current version's number.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"], condition=Q(deleted_at__isnull=True), name="unique_live_function_name"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def current_version(self) -> "FunctionVersion":
        return self.versions.get(number=self.version)

    @property
    def runtime(self) -> str:
        """The current version's runtime (a `Runtime`)."""
        return self.current_version.runtime


class LayerStatus(models.TextChoices):
    """A dependency layer's build. Legal moves:

        building ──> ready
            └─────> failed ──> building   (a later deploy of the same set tries again)

    `ready` is final: a ready layer never changes, so an admission that saw it ready needs no lock.
    """

    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


class DependencyLayer(models.Model):
    """The packages of one requirements set installed for one runtime image: content-addressed (`key`), shared by
    every function version, of any user, that asks for the same set, built once (jobs.dependencies).

    The layer itself is a gzipped tar in `DependencyLayerChunk` rows: the database is the one store that every
    worker host already reaches, and chunks keep each row (and each read) small whatever the layer's size.
    """

    key = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the normalised requirements, the "
                                                                 "runtime and the runtime image.")
    requirements = models.TextField(help_text="The normalised requirements.txt, or for node the normalised "
                                              "package.json and package-lock.json.")
    # Part of the key: a python and a node layer never share one. Defined as text, not Runtime's choices, because
    # Runtime is defined below.
    runtime = models.CharField(max_length=16, default="python")
    runtime_image = models.CharField(max_length=200)
    image_id = models.CharField(max_length=80, blank=True, help_text="The runtime image's id at the build.")
    status = models.CharField(max_length=16, choices=LayerStatus.choices, default=LayerStatus.BUILDING,
                              db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    log = models.TextField(blank=True, help_text="The build's output (the end of it, capped).")
    packages = models.JSONField(default=dict, blank=True, help_text="Installed distributions and their versions.")
    modules = models.JSONField(default=list, blank=True, help_text="Top-level modules of the requested packages, "
                                                                   "imported by warm containers while they wait.")
    size_bytes = models.PositiveBigIntegerField(null=True, blank=True, help_text="Installed size.")
    archive_bytes = models.PositiveBigIntegerField(null=True, blank=True)
    archive_sha256 = models.CharField(max_length=64, blank=True)
    build_started_at = models.DateTimeField(null=True, blank=True)
    built_at = models.DateTimeField(null=True, blank=True)
    build_seconds = models.FloatField(null=True, blank=True)
    # Set by the cleanup when it first finds no version or job using the layer; the layer is removed once this is
    # older than DEPENDENCY_LAYER_KEEP_SECONDS, and cleared if it is used again meanwhile.
    unused_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"layer {self.key[:12]} ({self.status})"


class DependencyLayerChunk(models.Model):
    """One piece of a ready layer's gzipped tar, in order of `index`."""

    layer = models.ForeignKey(DependencyLayer, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        ordering = ["layer", "index"]
        constraints = [models.UniqueConstraint(fields=["layer", "index"], name="unique_layer_chunk")]


class Runtime(models.TextChoices):
    """The language a function version's code is run by, and so its entry file and the container's command
    (jobs.sandbox.spec): `main.py` for python, `index.js` (or `main.js`) for node."""

    PYTHON = "python"
    NODE = "node"


class FunctionVersion(models.Model):
    """One immutable upload of a function's code: a normalised zip holding its entry file (main.py, or index.js for
    node) and its modules, the runtime that runs it, and its dependencies (normalised requirements, and the layer
    they are installed in)."""

    function = models.ForeignKey(Function, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    archive = models.BinaryField()
    sha256 = models.CharField(max_length=64)
    files = models.JSONField(default=list)
    unpacked_bytes = models.PositiveBigIntegerField()
    runtime = models.CharField(max_length=16, choices=Runtime.choices, default=Runtime.PYTHON)
    requirements = models.TextField(blank=True)
    # None without requirements, or once the cleanup removed the layer of a version nothing runs any more.
    layer = models.ForeignKey(DependencyLayer, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="versions")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["function", "-number"]
        constraints = [models.UniqueConstraint(fields=["function", "number"], name="unique_function_version")]

    def __str__(self) -> str:
        return f"{self.function.name} v{self.number}"

    @property
    def dependency_status(self) -> str:
        """The state of the version's dependencies: "" (none), a LayerStatus, or "removed" (layer cleaned up)."""
        if not self.requirements:
            return ""
        return self.layer.status if self.layer is not None else "removed"


class JobStatus(models.TextChoices):
    """A job's life. Legal moves (anything else is refused by `JobQuerySet.move`):

        queued ──> running ──> succeeded
          │  ^        ├──────> failed
          │  │        ├──────> timed_out
          │  │        └──────> cancelled
          │  └─ running      (its worker vanished before it started a container: run it again)
          ├──> cancelled
          └──> failed        (it could not be started: no executor, or its worker vanished)
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


TERMINAL = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED)

TRANSITIONS: dict[str, tuple[str, ...]] = {
    JobStatus.QUEUED: (JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED),
    JobStatus.RUNNING: (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.CANCELLED,
                        JobStatus.QUEUED),
}


class JobQuerySet(models.QuerySet):
    def move(self, pk: uuid.UUID, to: str, **fields: Any) -> bool:
        """Move job `pk` to status `to` with one conditional UPDATE; True when this call made the move.

        The UPDATE only matches a row whose current status may legally move to `to`, so two workers (or a worker
        and a cancel) racing on one job cannot both win, and a finished job never changes again.
        """
        sources = [status for status, targets in TRANSITIONS.items() if to in targets]
        if not sources:
            raise ValueError(f"no status may move to {to!r}")
        return self.filter(pk=pk, status__in=sources).update(status=to, **fields) == 1

    def queued_by_node(self, nodes: list[str]) -> dict[str, int]:
        """How many jobs wait in the queue of each of `nodes`: what routing weighs between nodes."""
        return dict(self.filter(status=JobStatus.QUEUED, node__in=nodes).values("node")
                    .annotate(n=models.Count("pk")).values_list("node", "n"))


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    function = models.ForeignKey(Function, on_delete=models.PROTECT, related_name="jobs")
    function_version = models.ForeignKey(FunctionVersion, on_delete=models.PROTECT, related_name="jobs")
    model_id = models.CharField(max_length=200)
    node = models.CharField(max_length=100, blank=True)
    # Where the function's other allowed models were routed at admission, {name the script uses: [model, node]}:
    # the gateway forwards to these, so a job is routed once and its hold priced at the models it may really call.
    routes = models.JSONField(default=dict, blank=True)
    queue = models.CharField(max_length=100)
    input_data = models.JSONField(null=True, blank=True)
    memory_mb = models.PositiveIntegerField()
    timeout_seconds = models.PositiveIntegerField()

    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    stdout_truncated = models.BooleanField(default=False)
    stderr_truncated = models.BooleanField(default=False)
    result = models.JSONField(null=True, blank=True)

    worker_id = models.CharField(max_length=200, blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    deliveries = models.PositiveIntegerField(default=0, help_text="How many times the broker delivered this job.")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # When the job's message was handed to the broker: by a relay (JOB_DISPATCH=outbox), or, in direct mode, by the
    # web process as the job was admitted. A queued job without one is waiting in the outbox (jobs/outbox.py).
    dispatched_at = models.DateTimeField(null=True, blank=True)
    interactive = models.BooleanField(
        default=False, help_text="Admitted by a synchronous POST /run, whose caller waits: it goes before its owner's "
                                 "queued asynchronous jobs (jobs.fairness).")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    peak_memory_bytes = models.PositiveBigIntegerField(null=True, blank=True)

    # Totals of the job's LLMCall rows (the ledger), kept here so lists and results need no aggregate.
    token_budget = models.PositiveBigIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    llm_calls = models.PositiveIntegerField(default=0)
    unmetered_calls = models.PositiveIntegerField(
        default=0, help_text="Calls whose token counts the node did not report (not billed as zero: unknown)."
    )
    estimated_calls = models.PositiveIntegerField(
        default=0, help_text="Calls billed with token counts the gateway estimated (the node did not report them)."
    )
    # The sum of the calls' costs that are known (each fixed when its call was recorded, see billing.pricing);
    # `uncosted_calls` counts the calls left out because their tokens or their model's price were unknown.
    cost = models.DecimalField(max_digits=24, decimal_places=10, default=Decimal(0))
    uncosted_calls = models.PositiveIntegerField(default=0)

    # The head of the job's receipt chain (jobs.metering.receipts): the last receipt's number and hash, locked and
    # moved by whoever appends one; and the hash of the job receipt that closed the chain when the job ended.
    receipt_seq = models.PositiveIntegerField(default=0)
    receipt_head = models.CharField(max_length=64, blank=True)
    receipt_hash = models.CharField(max_length=64, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            # The relay's look-up: only the jobs still to send, oldest first.
            models.Index(fields=["created_at"], name="job_outbox",
                         condition=models.Q(status=JobStatus.QUEUED, dispatched_at__isnull=True)),
            # Fair share's look-ups: each user's jobs still to send on a queue, and the jobs a queue has in flight.
            models.Index(fields=["queue", "owner", "created_at"], name="job_outbox_by_owner",
                         condition=models.Q(status=JobStatus.QUEUED, dispatched_at__isnull=True)),
            models.Index(fields=["queue", "owner"], name="job_in_flight",
                         condition=models.Q(status=JobStatus.RUNNING)
                         | models.Q(status=JobStatus.QUEUED, dispatched_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"job {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def llm_token_count(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# A ledger row is metered when the node reported both of its counts; the others are unknown, never zero.
METERED = Q(prompt_tokens__isnull=False, completion_tokens__isnull=False)


class LLMCallStatus(models.TextChoices):
    OK = "ok"
    ERROR = "error"


class LLMCall(models.Model):
    """One model call made by a job's script through its gateway: the billing ledger.

    Written only by the worker side (the gateway). Token counts are what the node itself reported, or, when it
    did not report them although it generated text, what the gateway counted (`estimated`); None means nothing
    is known (the node generated nothing the gateway saw), which is not the same as zero.
    """

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="calls")
    model_id = models.CharField(max_length=200)
    node = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=60, help_text="The API route the script called, e.g. /api/chat.")
    streamed = models.BooleanField(default=False)
    status = models.CharField(max_length=8, choices=LLMCallStatus.choices)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    estimated = models.BooleanField(
        default=False, help_text="The counts are the gateway's (the node's tokenizer, or an upper bound), not the "
                                 "node's report.")
    max_tokens_granted = models.PositiveIntegerField(null=True, blank=True)
    done_reason = models.CharField(max_length=40, blank=True)
    duration_ms = models.PositiveIntegerField(help_text="As the gateway measured it, request to last byte.")
    node_duration_ms = models.PositiveIntegerField(null=True, blank=True, help_text="As the node reported it.")
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    cost = models.DecimalField(
        max_digits=24, decimal_places=10, null=True, blank=True,
        help_text="Fixed when the call was recorded, at the price then in force; None when its tokens or its "
                  "model's price were unknown (unknown is not zero).",
    )
    # What an estimated call's counts are made from, while they wait to be counted exactly by the node's tokenizer
    # (jobs.metering.reconcile): the prompt as sent and the text delivered. Cleared once counted; None otherwise.
    recount = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "LLM call"
        indexes = [
            models.Index(fields=["job", "created_at"]),
            # The reconciliation's look-up: only the calls still to count exactly.
            models.Index(fields=["created_at"], name="llmcall_to_recount", condition=Q(recount__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.model_id} call of job {self.job_id}"

    @property
    def is_metered(self) -> bool:
        return self.prompt_tokens is not None and self.completion_tokens is not None

    @property
    def failed(self) -> bool:
        return self.status == LLMCallStatus.ERROR

    @property
    def total_tokens(self) -> int | None:
        return self.prompt_tokens + self.completion_tokens if self.is_metered else None


class ReceiptKind(models.TextChoices):
    CALL = "call"
    CORRECTION = "correction"
    JOB = "job"


class Receipt(models.Model):
    """One signed link of a job's receipt chain (jobs.metering.receipts): a model call, a correction of one, or the
    job receipt that closes the chain over all of its calls.

    `body` is the canonical JSON exactly as it was hashed and signed; the other columns repeat what the queries need
    (and what verify_ledger checks against the body). `call_id` names the ledger row without a foreign key, so that
    a row deleted behind the ledger's back leaves a receipt that says so. Rows are only ever inserted.
    """

    job = models.ForeignKey(Job, on_delete=models.PROTECT, related_name="receipts")
    seq = models.PositiveIntegerField(help_text="The receipt's place in its job's chain, from 1.")
    kind = models.CharField(max_length=16, choices=ReceiptKind.choices)
    call_id = models.BigIntegerField(null=True, blank=True, db_index=True, help_text="The LLMCall it receipts.")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    day = models.DateField(help_text="The usage day it counts in (a call's), or the day it closed the job.")
    body = models.TextField(help_text="The canonical JSON that was hashed and signed.")
    hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the body, hex.")
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=128, help_text="Ed25519 over the body, hex.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_receipt_link")]
        indexes = [models.Index(fields=["owner", "kind", "day"])]

    def __str__(self) -> str:
        return f"{self.kind} receipt {self.seq} of job {self.job_id}"


class DayCheckpoint(models.Model):
    """A user's signed checkpoint of one day: the hashes of the job receipts that closed that day, chained to the
    user's previous checkpoint (jobs.metering.checkpoints)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    day = models.DateField()
    body = models.TextField()
    hash = models.CharField(max_length=64, unique=True)
    key_id = models.CharField(max_length=32)
    signature = models.CharField(max_length=128)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["owner", "day"]
        constraints = [models.UniqueConstraint(fields=["owner", "day"], name="unique_day_checkpoint")]

    def __str__(self) -> str:
        return f"checkpoint of {self.day} for user {self.owner_id}"


class IdempotencyScope(models.TextChoices):
    RUN = "run"
    DEPLOY = "deploy"


class IdempotencyKey(models.Model):
    """A client's `Idempotency-Key` on a submit: the first request with it made `job` (or `function`), and a
    repeat within IDEMPOTENCY_KEY_TTL answers that instead of making another.

    The unique constraint is what makes concurrent duplicates safe: the row is inserted in the same transaction as
    the job, so a second request with the key waits for the first to commit and then finds its row.
    """

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=16, choices=IdempotencyScope.choices)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64, help_text="SHA-256 of the request's body.")
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    function = models.ForeignKey(Function, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["owner", "scope", "key"], name="unique_idempotency_key")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key}"


class JobEvent(models.Model):
    """One event of a job's live stream (status, output, model calls, usage, result), numbered per job.

    The embedded store of `jobs.events` (without Redis): `seq` counts from 1 in each job, with no gaps, in the
    order the events were written, so a listener resumes after the last number it saw. Rows older than
    JOB_EVENTS_TTL_SECONDS are pruned by `jobs.events.prune_events`.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16)
    data = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [models.UniqueConstraint(fields=["job", "seq"], name="unique_job_event_seq")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.seq} of job {self.job_id}"


class ServiceCounter(models.Model):
    """One user's recent service from one pool, the Virtual Token Counter of fair share (jobs.fairness): a queue's
    workers (`queue:<name>`, charged as jobs end) or a node's call slots (`node:<name>`, charged as calls are
    granted and end). Both counts decay with half-life FAIR_SHARE_HALF_LIFE_SECONDS from `updated_at`, so that they
    measure the last minutes; a row is only written under its lock (jobs.fairness.counters.charge)."""

    pool = models.CharField(max_length=110)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    service = models.FloatField(default=0, help_text="Service units at `updated_at` (docs/fair-share.md).")
    jobs = models.FloatField(default=0, help_text="Jobs (or calls) served, decayed like `service`.")
    updated_at = models.DateTimeField(default=timezone.now)
    served_at = models.DateTimeField(null=True, blank=True,
                                     help_text="When the pool last gave this user a worker (or a call slot).")

    class Meta:
        ordering = ["pool", "owner_id"]
        constraints = [models.UniqueConstraint(fields=["pool", "owner"], name="unique_service_counter")]

    def __str__(self) -> str:
        return f"{self.pool} / {self.owner_id}"


class WorkerSeats(models.Model):
    """How many jobs one worker runs at once from one queue, as its relay last said (every few seconds while it
    lives): what fair share sends a queue's jobs against (jobs.fairness.seats)."""

    worker = models.CharField(max_length=200)
    queue = models.CharField(max_length=100)
    seats = models.PositiveIntegerField()
    seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["queue", "worker"]
        constraints = [models.UniqueConstraint(fields=["worker", "queue"], name="unique_worker_queue")]


class CallTicket(models.Model):
    """A model call waiting for, or holding, one of its node's call slots (AINode.max_concurrent_calls), shared by
    every worker of the node (jobs.fairness.call_slots). Granted in fair-share order; deleted when the call ends."""

    node = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="+")
    interactive = models.BooleanField(default=False)
    units = models.FloatField(help_text="The prompt's service units, charged when the slot is granted.")
    created_at = models.DateTimeField(default=timezone.now)
    granted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["node", "granted_at"])]
