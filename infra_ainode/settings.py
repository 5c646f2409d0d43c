"""Settings for Infra AI Node.

Every value a user may change comes from the environment through the small helpers below, which refuse a
malformed value at start-up rather than at the first request. Each setting is listed in the README's
configuration table with its default. The defaults run out of the box: SQLite, kombu's filesystem broker, no
Redis.
"""
import logging
import os
import socket
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}")
    return value


def env_numbers(name: str, default: str, kind: type = float) -> list:
    """A comma-separated list of non-negative numbers (of `kind`), at least one."""
    raw = os.environ.get(name) or default
    try:
        values = [kind(item) for item in raw.split(",") if item.strip()]
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a comma-separated list of numbers, got {raw!r}") from None
    if not values or min(values) < 0:
        raise ImproperlyConfigured(f"{name} must list at least one number, none negative, got {raw!r}")
    return values


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, got {raw!r}")


# ---------------------------------------------------------------------------------------------------------
# Django core
# ---------------------------------------------------------------------------------------------------------
# ENVIRONMENT=development (a checkout's default: tests, scripts/stack.sh) may run on a development SECRET_KEY.
# ENVIRONMENT=production (the application image's default) refuses to start without a real one, and turns on
# secure cookies, HSTS and the HTTPS redirect unless each is turned off by name.
ENVIRONMENT = env_str("ENVIRONMENT", "development")
if ENVIRONMENT not in ("development", "production"):
    raise ImproperlyConfigured(f"ENVIRONMENT must be development or production, got {ENVIRONMENT!r}")
PRODUCTION = ENVIRONMENT == "production"
DEBUG = env_bool("DEBUG", False)
_DEVELOPMENT_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
SECRET_KEY = env_str("SECRET_KEY", "" if PRODUCTION else _DEVELOPMENT_SECRET_KEY)
if PRODUCTION and (len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY == _DEVELOPMENT_SECRET_KEY
                   or SECRET_KEY.startswith("django-insecure")):
    raise ImproperlyConfigured(
        "ENVIRONMENT=production needs a real SECRET_KEY: at least 50 characters, 5 of them different, e.g. "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'")
if PRODUCTION and DEBUG:
    raise ImproperlyConfigured("DEBUG must be false when ENVIRONMENT=production")
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

# HTTPS. Behind a proxy that ends TLS, SECURE_PROXY_SSL_HEADER names the header it sets and the value meaning
# HTTPS ("X-Forwarded-Proto: https"); only set it when the proxy overwrites that header on every request.
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
_proxy_header = env_str("SECURE_PROXY_SSL_HEADER", "")
if _proxy_header:
    _name, _, _value = _proxy_header.partition(":")
    if not _name.strip() or not _value.strip():
        raise ImproperlyConfigured(f"SECURE_PROXY_SSL_HEADER must look like 'X-Forwarded-Proto: https', "
                                   f"got {_proxy_header!r}")
    SECURE_PROXY_SSL_HEADER = ("HTTP_" + _name.strip().upper().replace("-", "_"), _value.strip())

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "accounts",
    "models_catalog",
    "jobs",
    "billing",
    "outbound",
    "schedules",
]

MIDDLEWARE = [
    # /healthz, /readyz and /metrics, answered before the host check and the HTTPS redirect (see its docstring).
    "infra_ainode.probes.ProbesMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves static files from the web process itself, so the admin, the dashboard and the API docs (Swagger UI and
    # ReDoc, from drf-spectacular-sidecar) are styled with DEBUG off, need no CDN and no other web server:
    # STATIC_ROOT once `manage.py collectstatic` has run (scripts/stack.sh runs it at start-up), else the apps' own
    # folders (the finders).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "infra_ainode.urls"
WSGI_APPLICATION = "infra_ainode.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite by default; PostgreSQL in production and CI (DATABASE_URL=postgres://user@host:5432/name).
DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
_on_postgresql = DATABASES["default"]["ENGINE"].endswith("postgresql")
if _on_postgresql:
    # A database host that drops packets would hold a request (or a /readyz check's thread) for as long as the
    # kernel retries; give up on connecting after this many seconds.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "connect_timeout", env_int("DATABASE_CONNECT_TIMEOUT", 10, minimum=1))
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and worker processes share the file. WAL lets readers run beside the one writer. IMMEDIATE takes the
    # write lock when a transaction begins: a transaction that read first (submit_job reads the function's version)
    # could not upgrade its read lock while another connection writes, and SQLite refuses that at once, without
    # waiting. With the lock taken at BEGIN, a writer waits up to the busy timeout (20 s) for its turn instead.
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
    # Tests run the worker in another process, which must open the same database file as the test run.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True
STATIC_URL = "static/"
# `manage.py collectstatic` copies the apps' static files here; WhiteNoise serves them (see MIDDLEWARE).
STATIC_ROOT = VAR_DIR / "static"
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# LOG_FORMAT=json writes one JSON object per line (for a log collector); plain is for people.
LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "core.logs.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
if LOG_FORMAT == "json":
    # Python's warnings (a library's UserWarning, say) go through logging too: printed raw, they would break the
    # stream of JSON lines a collector parses.
    logging.captureWarnings(True)

# ---------------------------------------------------------------------------------------------------------
# Operations: probes and metrics
# ---------------------------------------------------------------------------------------------------------
# Each /readyz check (database, broker, Redis, AI nodes) gets this many milliseconds; they run at once.
READYZ_TIMEOUT = env_int("READYZ_TIMEOUT", 2000, minimum=1)
# A process answers /readyz from its last round of checks for this long (0: every probe checks anew).
READYZ_CACHE_SECONDS = env_float("READYZ_CACHE_SECONDS", 2.0, minimum=0.0)
# /metrics asks for `Authorization: Bearer METRICS_TOKEN`; with no token it answers only to loopback clients, and
# in production to nobody.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# A worker serves its own metrics on this port (0: not at all), on WORKER_METRICS_ADDRESS; with METRICS_TOKEN set
# a scrape needs it, and an address other than loopback refuses to start without one.
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 0, minimum=0)
WORKER_METRICS_ADDRESS = env_str("WORKER_METRICS_ADDRESS", "127.0.0.1")
# A worker touches this file every WORKER_HEARTBEAT_SECONDS from its own timer (empty: no file); a liveness
# probe fails when the file is older than a few intervals.
WORKER_HEARTBEAT_FILE = env_str("WORKER_HEARTBEAT_FILE", "")
WORKER_HEARTBEAT_SECONDS = env_int("WORKER_HEARTBEAT_SECONDS", 10, minimum=1)

# ---------------------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.api.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.api.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    # Each user's request rate comes from their quota (accounts.Quota, set in the admin); none: no limit.
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.QuotaRateThrottle"],
}

# The OpenAPI schema (/api/schema/) and its docs pages (/api/docs/, /api/redoc/), whose JavaScript comes from the
# drf-spectacular-sidecar package: nothing is fetched from a CDN.
SPECTACULAR_SETTINGS = {
    "TITLE": "Infra AI Node API",
    "DESCRIPTION": (
        "Run Python functions as jobs in locked-down containers, with every language-model token metered.\n\n"
        "Authenticate with `Authorization: Bearer KEY` or `x-api-key: KEY`. Every error answers "
        "`{\"detail\": \"...\", \"code\": \"...\"}`; a failed job is not an HTTP error but a job with `status` "
        "and `errorCode`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"JobStatusEnum": "jobs.models.JobStatus"},
    "PREPROCESSING_HOOKS": ["core.schema.optional_trailing_slashes"],
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "jobs.api.schema.add_links"],
    "SCHEMA_PATH_PREFIX": r"/(api/v1/)?",
}

# ---------------------------------------------------------------------------------------------------------
# Celery: the broker comes from CELERY_BROKER_URL. filesystem:// (default) needs no server; sqs://KEY:SECRET@HOST:PORT
# is production (SQS or moto_server); redis://HOST:PORT/N also works.
# ---------------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
# How an admitted job reaches the broker (jobs/outbox.py). `outbox`, the default with PostgreSQL: the committed row
# is the message; a relay in every worker publishes it, woken by the admission's NOTIFY, so the web process does no
# broker I/O and a job whose web process died after the commit is still sent. `direct`, the default with SQLite
# (which has no NOTIFY): the web process publishes it once its row commits. Workers on PostgreSQL run the relay
# whatever this says, so a web process in either mode is served.
JOB_DISPATCH = env_str("JOB_DISPATCH", "outbox" if _on_postgresql else "direct")
if JOB_DISPATCH not in ("direct", "outbox"):
    raise ImproperlyConfigured(f"JOB_DISPATCH must be direct or outbox, got {JOB_DISPATCH!r}")
if JOB_DISPATCH == "outbox" and not _on_postgresql:
    raise ImproperlyConfigured("JOB_DISPATCH=outbox needs PostgreSQL (the relay is woken by LISTEN/NOTIFY)")
# In outbox mode: how long a job may wait for a broker that refuses it before it fails with `queue_unavailable`,
# and how often a relay looks for jobs without being woken (a lost notification, a broker that was down).
JOB_DISPATCH_TIMEOUT = env_int("JOB_DISPATCH_TIMEOUT", 300, minimum=1)
JOB_DISPATCH_POLL_SECONDS = env_float("JOB_DISPATCH_POLL_SECONDS", 5.0)
JOB_QUEUE = env_str("JOB_QUEUE", "jobs")
# Fair share between users (docs/fair-share.md). With the outbox, a queue's jobs are sent only as its workers have
# seats (plus FAIR_SHARE_AHEAD more, so that a worker never waits for its next message), each time to the user with
# the least recent service for their weight; off: every job is sent at once, oldest first. Service decays with this
# half-life; a user whose next job has been passed over this long goes first whatever their service.
FAIR_SHARE = env_bool("FAIR_SHARE", True)
FAIR_SHARE_AHEAD = env_int("FAIR_SHARE_AHEAD", 1, minimum=0)
FAIR_SHARE_HALF_LIFE_SECONDS = env_float("FAIR_SHARE_HALF_LIFE_SECONDS", 300.0, minimum=1.0)
FAIR_SHARE_MAX_WAIT_SECONDS = env_float("FAIR_SHARE_MAX_WAIT_SECONDS", 60.0, minimum=1.0)
JOB_MAX_TIMEOUT = env_int("JOB_MAX_TIMEOUT", 900, minimum=1)
AWS_REGION = env_str("AWS_REGION", "us-east-1")

if CELERY_BROKER_URL.startswith("filesystem://"):
    BROKER_DIR = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "out"),
        "data_folder_out": str(BROKER_DIR / "out"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # A consumer is woken by a doorbell when a message lands (infra_ainode/filesystem_broker.py); this is only
        # the fallback look at the folder.
        "polling_interval": 1.0,
    }
elif CELERY_BROKER_URL.startswith("sqs://"):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "region": AWS_REGION,
        "is_secure": env_bool("SQS_IS_SECURE", True),
        "queue_name_prefix": env_str("SQS_QUEUE_PREFIX", "infra-ainode-"),
        "wait_time_seconds": env_int("SQS_WAIT_TIME_SECONDS", 1, minimum=0),
        "polling_interval": 0,
        # A message must stay invisible for longer than the longest job, or SQS hands it to a second worker
        # while the first still runs it (the claim would refuse it, but the job would look redelivered).
        "visibility_timeout": env_int("SQS_VISIBILITY_TIMEOUT", JOB_MAX_TIMEOUT + 300, minimum=1),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": JOB_MAX_TIMEOUT + 300}

CELERY_TASK_DEFAULT_QUEUE = JOB_QUEUE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# ---------------------------------------------------------------------------------------------------------
# Results: the Job row is the source of truth; Redis (optional) carries result:{jobId} and a notification.
# ---------------------------------------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
# The cache holds the throttles' request counts and the generations of the cached look-ups (core.lookups): it must
# be shared by every web process, so it is Redis when there is one, else files under VAR_DIR (every process on this
# host; web processes on several hosts need REDIS_URL).
# CACHE_KEY_PREFIX keeps apart stacks (or test processes) that share one Redis or one VAR_DIR.
CACHE_KEY_PREFIX = env_str("CACHE_KEY_PREFIX", "")


def cache_config(prefix: str) -> dict[str, dict]:
    """CACHES for key prefix `prefix`: Redis when REDIS_URL is set, else files in a folder of the prefix's own."""
    if REDIS_URL:
        return {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                            "KEY_PREFIX": prefix}}
    return {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "KEY_PREFIX": prefix,
                        "LOCATION": str(VAR_DIR / "cache" / (prefix or "default")),
                        "OPTIONS": {"MAX_ENTRIES": 10_000}}}


CACHES = cache_config(CACHE_KEY_PREFIX)
# How long a process may keep a look-up of an API key (with its user and quota), a function or a model's route. A
# revoked key, a changed quota, function or catalogue is seen by every process at its next request (the change
# writes a new generation to the cache); the time to live only bounds changes made behind the services' back (a
# queryset update in a shell). 0 turns the caching off.
LOOKUP_CACHE_SECONDS = env_float("LOOKUP_CACHE_SECONDS", 60.0)
RESULT_TTL_SECONDS = env_int("RESULT_TTL_SECONDS", 86400, minimum=1)
RUN_SYNC_TIMEOUT = env_float("RUN_SYNC_TIMEOUT", 30.0)

# ---------------------------------------------------------------------------------------------------------
# Live job events (GET /api/v1/jobs/{id}/events): kept in Redis streams when REDIS_URL is set, else in the
# JobEvent table. Each listener holds one web thread while it follows a job: bound them.
# ---------------------------------------------------------------------------------------------------------
JOB_EVENTS_TTL_SECONDS = env_int("JOB_EVENTS_TTL_SECONDS", 86400, minimum=60)
JOB_EVENTS_POLL_SECONDS = env_float("JOB_EVENTS_POLL_SECONDS", 0.25)
JOB_EVENTS_KEEPALIVE_SECONDS = env_float("JOB_EVENTS_KEEPALIVE_SECONDS", 15.0)
# A web process follows at most this many jobs at once, and never more than half its threads (WEB_THREADS): the
# other half answers the API and the probes. One user follows at most JOB_EVENTS_MAX_PER_USER jobs per process.
JOB_EVENTS_MAX_LISTENERS = env_int("JOB_EVENTS_MAX_LISTENERS", 100, minimum=1)
JOB_EVENTS_MAX_PER_USER = env_int("JOB_EVENTS_MAX_PER_USER", 2, minimum=1)
# The threads of each gunicorn worker (infra_ainode/gunicorn.conf.py reads the same variable): a live event stream
# holds one thread, not the worker. Two by default: each more thread costs every admission CPU (docs/performance.md).
WEB_THREADS = env_int("WEB_THREADS", 2, minimum=1)
JOB_EVENTS_FLUSH_SECONDS = env_float("JOB_EVENTS_FLUSH_SECONDS", 0.1)
JOB_EVENTS_FLUSH_BYTES = env_int("JOB_EVENTS_FLUSH_BYTES", 64 * 1024, minimum=1024)

# ---------------------------------------------------------------------------------------------------------
# Functions and jobs
# ---------------------------------------------------------------------------------------------------------
FUNCTION_MAX_CODE_BYTES = env_int("FUNCTION_MAX_CODE_BYTES", 5 * 1024 * 1024, minimum=1)
FUNCTION_MAX_UNPACKED_BYTES = env_int("FUNCTION_MAX_UNPACKED_BYTES", 20 * 1024 * 1024, minimum=1)
FUNCTION_MAX_FILES = env_int("FUNCTION_MAX_FILES", 500, minimum=1)
JOB_INPUT_MAX_BYTES = env_int("JOB_INPUT_MAX_BYTES", 1024 * 1024, minimum=1)
# The largest request body Django reads into memory: the largest code upload sent as base64 (4/3 of its size) or
# the largest job input with its JSON escapes (taken as twice its size), plus room for the other fields. Our own
# validators then check the decoded sizes.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int(
    "DATA_UPLOAD_MAX_MEMORY_SIZE",
    max(FUNCTION_MAX_CODE_BYTES * 4 // 3, JOB_INPUT_MAX_BYTES * 2) + 1024 * 1024, minimum=1024,
)
# Multipart files count against the same limit (Django would otherwise spool any size to disk).
FILE_UPLOAD_HANDLERS = [
    "core.uploads.BoundedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
# Uploaded Python is syntax-checked in a child process with at most this much memory (address space) and time;
# a check that cannot finish within them leaves the syntax to the job container, which reports it as the job's error.
FUNCTION_SYNTAX_CHECK_MEMORY_MB = env_int("FUNCTION_SYNTAX_CHECK_MEMORY_MB", 256, minimum=64)
FUNCTION_SYNTAX_CHECK_SECONDS = env_int("FUNCTION_SYNTAX_CHECK_SECONDS", 5, minimum=1)
JOB_PAYLOAD_ENV_MAX_BYTES = env_int("JOB_PAYLOAD_ENV_MAX_BYTES", 64 * 1024, minimum=0)
JOB_DEFAULT_MEMORY_MB = env_int("JOB_DEFAULT_MEMORY_MB", 256, minimum=16)
JOB_MAX_MEMORY_MB = env_int("JOB_MAX_MEMORY_MB", 4096, minimum=16)
JOB_DEFAULT_TIMEOUT = env_int("JOB_DEFAULT_TIMEOUT", 60, minimum=1)
JOB_CPUS = env_float("JOB_CPUS", 1.0)
JOB_PIDS_LIMIT = env_int("JOB_PIDS_LIMIT", 64, minimum=4)
JOB_NOFILE_LIMIT = env_int("JOB_NOFILE_LIMIT", 256, minimum=16)
JOB_TMPFS_MB = env_int("JOB_TMPFS_MB", 64, minimum=1)
JOB_OUTPUT_LIMIT_BYTES = env_int("JOB_OUTPUT_LIMIT_BYTES", 1024 * 1024, minimum=1024)
JOB_RESULT_MAX_BYTES = env_int("JOB_RESULT_MAX_BYTES", 1024 * 1024, minimum=1024)
# How long past its timeout a `running` job may stay before it is declared lost (its worker died).
JOB_LOST_GRACE_SECONDS = env_int("JOB_LOST_GRACE_SECONDS", 60, minimum=0)
# A job whose container the engine could not create or start (the engine is down or restarting) waits this long
# for it, then runs; only a job whose script may have run is failed (executor_unavailable). Keep it well under
# JOB_LOST_GRACE_SECONDS plus the shortest job timeout, or recovery takes a waiting job for a lost one.
JOB_ENGINE_WAIT_SECONDS = env_int("JOB_ENGINE_WAIT_SECONDS", 30, minimum=0)
# A job whose files do not fit on the work root's full disk waits this long for room (its script has not run), then
# fails with work_disk_full.
JOB_DISK_WAIT_SECONDS = env_int("JOB_DISK_WAIT_SECONDS", 30, minimum=0)
# A job sent to the broker but still queued this long after (and longer than it waited to be sent) is sent again:
# its message may be held by a worker that died (jobs/outbox.py). Its claim keeps it from running twice.
# A worker whose database is down waits this long for it, with growing pauses, before a job's claim, its end, or a
# model call's ledger row is given up (core/database.py): a database restart costs time, not the job or its bill.
JOB_DATABASE_WAIT_SECONDS = env_int("JOB_DATABASE_WAIT_SECONDS", 120, minimum=0)
JOB_RESEND_AFTER_SECONDS = env_int("JOB_RESEND_AFTER_SECONDS", 120, minimum=5)
# How long an Idempotency-Key on POST /run or a deploy is remembered (a repeat within it gets the first answer).
IDEMPOTENCY_KEY_TTL = env_int("IDEMPOTENCY_KEY_TTL", 86400, minimum=1)
JOB_RUNTIME_IMAGE = env_str("JOB_RUNTIME_IMAGE", "infra-ainode-runtime:bookworm-2")
# Host folder for each job's code and sockets; it is bind-mounted into the job container, so it must be a path
# the Docker engine sees (the worker and the engine share a host).
# Each job's gateway socket is JOB_WORK_ROOT/<job uuid>/run/gateway.sock, and a Unix socket path holds at most
# 107 bytes: the default moves to /tmp when the checkout's path is too deep, and a root set too long is refused.
# Wherever it is, the runner refuses a root that is a link, is not owned by the worker's uid or that other users can
# write to (jobs/workdir.py): a fallback in /tmp is used only if it is the worker's own.
_SOCKET_TAIL = len("/00000000-0000-0000-0000-000000000000/run/gateway.sock")
_default_work_root = VAR_DIR / "jobs"
if len(str(_default_work_root).encode()) + _SOCKET_TAIL > 107:
    _default_work_root = Path("/tmp/infra-ainode-jobs")
JOB_WORK_ROOT = Path(env_str("JOB_WORK_ROOT", str(_default_work_root)))
if len(str(JOB_WORK_ROOT).encode()) + _SOCKET_TAIL > 107:
    raise ImproperlyConfigured(f"JOB_WORK_ROOT {JOB_WORK_ROOT} is too long for Unix socket paths; use a shorter one.")
DOCKER_HOST = env_str("DOCKER_HOST", "")
WORKER_ID = env_str("WORKER_ID", f"{socket.gethostname()}-{os.getpid()}")
# Warm single-use containers: each worker process keeps WARM_POOL_SIZE started containers per resource profile
# (the default one always, others once jobs of WARM_POOL_PROFILE_OWNERS different owners asked for them, or one
# owner asked again for one, one per owner; at most WARM_POOL_PROFILES besides the default), each used by one job only. 0 turns the pool off: every job creates its
# container (the cold path).
WARM_POOL_SIZE = env_int("WARM_POOL_SIZE", 0, minimum=0)
WARM_POOL_PROFILES = env_int("WARM_POOL_PROFILES", 4, minimum=1)
WARM_POOL_PROFILE_OWNERS = env_int("WARM_POOL_PROFILE_OWNERS", 2, minimum=1)
WARM_POOL_MAX_AGE_SECONDS = env_int("WARM_POOL_MAX_AGE_SECONDS", 600, minimum=1)

# ---------------------------------------------------------------------------------------------------------
# Dependency layers (a function's requirements.txt, docs/dependencies.md): built once per set by a worker of
# DEPENDENCY_BUILD_QUEUE (wheels fetched by the host's pip, with its own index configuration; installed in a sandbox
# container), stored in the database, extracted on each worker host under DEPENDENCY_LAYER_DIR (default:
# JOB_WORK_ROOT/layers, which the engine sees) and mounted read-only into job containers.
# ---------------------------------------------------------------------------------------------------------
DEPENDENCY_LAYER_MAX_MB = env_int("DEPENDENCY_LAYER_MAX_MB", 500, minimum=1)
DEPENDENCY_BUILD_TIMEOUT = env_int("DEPENDENCY_BUILD_TIMEOUT", 600, minimum=10)
# Memory of a build's container besides the layer's own tmpfs (which counts against it).
DEPENDENCY_BUILD_MEMORY_MB = env_int("DEPENDENCY_BUILD_MEMORY_MB", 512, minimum=64)
DEPENDENCY_BUILD_QUEUE = env_str("DEPENDENCY_BUILD_QUEUE", JOB_QUEUE)
DEPENDENCY_LAYER_DIR = env_str("DEPENDENCY_LAYER_DIR", "")
DEPENDENCY_PIP_CACHE_DIR = Path(env_str("DEPENDENCY_PIP_CACHE_DIR", str(VAR_DIR / "pip-cache")))
# A node layer's packages are fetched by the host's npm (`npm ci --ignore-scripts`), with its own configuration;
# DEPENDENCY_NPM_REGISTRY, when set, is the registry it fetches from and one that lockfiles may name.
DEPENDENCY_NPM_CACHE_DIR = Path(env_str("DEPENDENCY_NPM_CACHE_DIR", str(VAR_DIR / "npm-cache")))
DEPENDENCY_NPM_REGISTRY = env_str("DEPENDENCY_NPM_REGISTRY", "")
# A layer that no live function's current version and no queued or running job uses is removed after this long.
DEPENDENCY_LAYER_KEEP_SECONDS = env_int("DEPENDENCY_LAYER_KEEP_SECONDS", 86400, minimum=0)

# ---------------------------------------------------------------------------------------------------------
# AI nodes and models
# ---------------------------------------------------------------------------------------------------------
AI_NODE_URL = env_str("AI_NODE_URL", "http://127.0.0.1:8090")
AI_NODE_KIND = env_str("AI_NODE_KIND", "openai")
AI_NODE_TIMEOUT = env_int("AI_NODE_TIMEOUT", 2000, minimum=1)
# A job for a model whose nodes did not answer at the last sync asks those nodes again (within AI_NODE_TIMEOUT)
# before it is refused, at most once per this many seconds per node and process.
AI_NODE_RECHECK_SECONDS = env_float("AI_NODE_RECHECK_SECONDS", 5.0)
DEFAULT_MODEL_ID = env_str("DEFAULT_MODEL_ID", "smollm2:135m")
AI_NODES = env_str("AI_NODES", "")
# The single node's limit on model calls at once across all its workers (AI_NODES gives each node its own
# `max_concurrent_calls`); 0: no limit. Calls past it wait their turn in fair-share order.
AI_NODE_MAX_CONCURRENT_CALLS = env_int("AI_NODE_MAX_CONCURRENT_CALLS", 0, minimum=0)
# Seconds between catalogue syncs (Celery beat, task models_catalog.sync_models); 0 turns the schedule off.
MODEL_SYNC_INTERVAL = env_int("MODEL_SYNC_INTERVAL", 60, minimum=0)
# Periodic work, run by `celery beat` (or a worker started with -B): keep the catalogue fresh, recover lost jobs
# and messages, and the rest (docs/operating.md#periodic-tasks).

def periodic(task: str, every: float, queue: str) -> dict:
    """A beat entry: `task` every `every` seconds on `queue`; a run that waited longer than one interval in the
    queue is stale (the next replaces it)."""
    return {"task": task, "schedule": float(every), "options": {"queue": queue, "routing_key": queue, "expires": every}}


CELERY_BEAT_SCHEDULE = {
    "recover-lost-jobs": periodic("jobs.recover_lost_jobs", 60, JOB_QUEUE),
    "reconcile-estimated-calls": periodic("jobs.reconcile_estimated_calls", 60, JOB_QUEUE),
    # Each user's signed checkpoint of each day's job receipts, once the day is over (jobs.metering.checkpoints).
    "seal-receipt-days": periodic("jobs.seal_receipt_days", 3600, JOB_QUEUE),
    "purge-idempotency-keys": periodic("jobs.purge_idempotency_keys", 3600, JOB_QUEUE),
    "prune-job-events": periodic("jobs.prune_job_events", 3600, JOB_QUEUE),
    # Lost and unstarted layer builds, layers nothing uses, and the cache of the worker that runs it.
    "sweep-dependency-layers": periodic("jobs.sweep_layers", 300, JOB_QUEUE),
}
# ---------------------------------------------------------------------------------------------------------
# Events out (docs/webhooks.md): webhooks, per-run callbacks, threshold alerts and the usage export leave through
# one outbox, delivered by the workers of OUTBOUND_QUEUE (run a worker of its own on it: a slow endpoint then holds
# only that worker's slots, never a job's).
# ---------------------------------------------------------------------------------------------------------
OUTBOUND_QUEUE = env_str("OUTBOUND_QUEUE", "outbound")
# One attempt's connect, send and answer together may take at most this long.
OUTBOUND_TIMEOUT_SECONDS = env_float("OUTBOUND_TIMEOUT_SECONDS", 5.0, minimum=0.1)
# The pauses after each failed attempt, in seconds: one attempt more than pauses, then the event is dead (about 9
# hours by default). The pauses grow by up to a tenth at random, so that retries of many events do not come at once.
OUTBOUND_RETRY_SECONDS = env_numbers("OUTBOUND_RETRY_SECONDS", "10,60,300,1800,7200,21600", float)
# How often the sweep sends the events that are due (retries whose message was lost, leases of killed workers).
OUTBOUND_SWEEP_SECONDS = env_float("OUTBOUND_SWEEP_SECONDS", 10.0, minimum=0.5)
OUTBOUND_RESPONSE_BODY_BYTES = env_int("OUTBOUND_RESPONSE_BODY_BYTES", 1024, minimum=0)
# Delivered and dead events (and their logs), and schedules' ticks, are removed after this long (beat, hourly).
OUTBOUND_KEEP_SECONDS = env_int("OUTBOUND_KEEP_SECONDS", 30 * 86400, minimum=3600)
# Where deliveries may go. Hosts: names (`*.example.com` matches below it) or empty for any. Networks (CIDR):
# addresses allowed although they are private, loopback, link-local or otherwise not global, which are refused
# otherwise, checked on the address connected to (a name that resolves to 10.0.0.1 is refused too).
OUTBOUND_ALLOWED_HOSTS = [h.strip().lower() for h in env_str("OUTBOUND_ALLOWED_HOSTS", "").split(",") if h.strip()]
OUTBOUND_ALLOWED_NETWORKS = [n.strip() for n in env_str("OUTBOUND_ALLOWED_NETWORKS", "").split(",") if n.strip()]
# After a secret's rotation, deliveries are signed with the old secret too for this long.
WEBHOOK_SECRET_OVERLAP_SECONDS = env_int("WEBHOOK_SECRET_OVERLAP_SECONDS", 86400, minimum=0)
# Percentages of a quota's monthly tokens or cost at which `quota.threshold` fires (once per month each).
QUOTA_THRESHOLDS = env_numbers("QUOTA_THRESHOLDS", "50,80,95,100", int)
# The usage export: each model call and each job's total as a CloudEvent to this URL (empty: no export), signed
# with USAGE_EXPORT_SECRET (a whsec_ secret) when set.
USAGE_EXPORT_URL = env_str("USAGE_EXPORT_URL", "")
USAGE_EXPORT_SECRET = env_str("USAGE_EXPORT_SECRET", "")
CELERY_BEAT_SCHEDULE["prune-outbound"] = periodic("outbound.prune", 3600, OUTBOUND_QUEUE)
CELERY_BEAT_SCHEDULE["sweep-outbound"] = periodic("outbound.sweep", OUTBOUND_SWEEP_SECONDS, OUTBOUND_QUEUE)

# ---------------------------------------------------------------------------------------------------------
# Schedules (docs/webhooks.md#schedules): beat fires the due ones every SCHEDULE_POLL_SECONDS on SCHEDULE_QUEUE
# (the outbound queue by default: its workers are never busy running a job for long).
# ---------------------------------------------------------------------------------------------------------
SCHEDULE_POLL_SECONDS = env_float("SCHEDULE_POLL_SECONDS", 5.0, minimum=0.5)
SCHEDULE_QUEUE = env_str("SCHEDULE_QUEUE", OUTBOUND_QUEUE)
SCHEDULE_MIN_INTERVAL_SECONDS = env_int("SCHEDULE_MIN_INTERVAL_SECONDS", 10, minimum=1)
# After an outage, a schedule runs once for the first tick it missed within this many seconds; older ones are not run.
SCHEDULE_CATCH_UP_SECONDS = env_int("SCHEDULE_CATCH_UP_SECONDS", 60, minimum=0)
CELERY_BEAT_SCHEDULE["prune-schedule-ticks"] = periodic("schedules.prune_ticks", 3600, SCHEDULE_QUEUE)
CELERY_BEAT_SCHEDULE["fire-schedules"] = periodic("schedules.fire_due", SCHEDULE_POLL_SECONDS, SCHEDULE_QUEUE)

if MODEL_SYNC_INTERVAL:
    CELERY_BEAT_SCHEDULE["sync-models"] = periodic("models_catalog.sync_models", MODEL_SYNC_INTERVAL, JOB_QUEUE)

# Model calls from jobs: the longest a call may take, and the most tokens one call may generate.
AI_CALL_TIMEOUT = env_int("AI_CALL_TIMEOUT", 120, minimum=1)
# A model call whose node refuses connections (restarting, say: nothing was asked of it) is tried again this long.
AI_NODE_WAIT_SECONDS = env_int("AI_NODE_WAIT_SECONDS", 20, minimum=0)
AI_MAX_OUTPUT_TOKENS = env_int("AI_MAX_OUTPUT_TOKENS", 2048, minimum=1)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
GATEWAY_MAX_CONCURRENT_CALLS = env_int("GATEWAY_MAX_CONCURRENT_CALLS", 4, minimum=1)
# Connections a job may hold open on its gateway at once (more are answered 503 too_many_connections), how long
# the gateway waits for a silent script's bytes (or for it to read an answer), and how long a job's end waits for
# its cancelled calls to be put on the ledger.
GATEWAY_MAX_CONNECTIONS = env_int("GATEWAY_MAX_CONNECTIONS", 32, minimum=2)
GATEWAY_SOCKET_TIMEOUT = env_int("GATEWAY_SOCKET_TIMEOUT", 30, minimum=1)
GATEWAY_DRAIN_SECONDS = env_int("GATEWAY_DRAIN_SECONDS", 5, minimum=1)

# ---------------------------------------------------------------------------------------------------------
# Billing: prices are ModelPrice rows (admin); a call's cost is fixed in this currency when it is recorded.
# ---------------------------------------------------------------------------------------------------------
BILLING_CURRENCY = env_str("BILLING_CURRENCY", "USD")
# The token budget of a job that has none, when its owner's quota limits tokens or cost per month: its worst case
# (this budget at its model's price) is what is held against the quota while it runs.
QUOTA_DEFAULT_TOKEN_BUDGET = env_int("QUOTA_DEFAULT_TOKEN_BUDGET", 4096, minimum=1)
if not (len(BILLING_CURRENCY) == 3 and BILLING_CURRENCY.isascii() and BILLING_CURRENCY.isalpha()
        and BILLING_CURRENCY.isupper()):
    raise ImproperlyConfigured(f"BILLING_CURRENCY must be a three-letter ISO 4217 code, got {BILLING_CURRENCY!r}")
# Receipts (billing.receipt_keys): the Ed25519 key that signs every model call's receipt, as base64 of its 32-byte
# seed, or a file holding that (or a PEM private key). Production refuses to start without one, as for SECRET_KEY;
# development makes one under VAR_DIR on first use. Rotate by configuring a new key: the old public key stays
# published, so its receipts still verify.
RECEIPT_SIGNING_KEY = env_str("RECEIPT_SIGNING_KEY", "")
RECEIPT_SIGNING_KEY_FILE = env_str("RECEIPT_SIGNING_KEY_FILE", "" if PRODUCTION else
                                   str(VAR_DIR / "receipt-signing-key"))
if PRODUCTION and not (RECEIPT_SIGNING_KEY or RECEIPT_SIGNING_KEY_FILE):
    raise ImproperlyConfigured(
        "ENVIRONMENT=production needs a receipt signing key: RECEIPT_SIGNING_KEY (base64 of 32 random bytes, e.g. "
        "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())') or "
        "RECEIPT_SIGNING_KEY_FILE")
if PRODUCTION and not RECEIPT_SIGNING_KEY and not Path(RECEIPT_SIGNING_KEY_FILE).is_file():
    raise ImproperlyConfigured(f"RECEIPT_SIGNING_KEY_FILE {RECEIPT_SIGNING_KEY_FILE} is not a file")
