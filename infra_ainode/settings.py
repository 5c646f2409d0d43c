"""Settings for Infra AI Node.

Every value a user may change comes from the environment through the small helpers below, which refuse a
malformed value at start-up rather than at the first request. Each setting is listed in the README's
configuration table with its default. The defaults run out of the box: SQLite, kombu's filesystem broker, no
Redis.
"""
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


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None


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
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-secret-key-change-me")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = [h for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",") if h]
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "accounts",
    "models_catalog",
    "jobs",
    "billing",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Web and worker processes share the file: wait for a lock instead of failing at once. A transaction takes the
    # write lock when it begins (IMMEDIATE): one that began as a reader and then wrote would fail at once with
    # "database is locked" when another writer held the lock, waiting or not. WAL lets readers go on beside a writer.
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
STATIC_ROOT = VAR_DIR / "static"
# Uploads of function code are checked by size in our own validator; allow DRF to read them first.
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024 * 1024

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

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
}

# ---------------------------------------------------------------------------------------------------------
# Celery: the broker comes from CELERY_BROKER_URL. filesystem:// (default) needs no server; sqs://KEY:SECRET@HOST:PORT
# is production (SQS or moto_server); redis://HOST:PORT/N also works.
# ---------------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
JOB_QUEUE = env_str("JOB_QUEUE", "jobs")
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
RESULT_TTL_SECONDS = env_int("RESULT_TTL_SECONDS", 86400, minimum=1)
RUN_SYNC_TIMEOUT = env_float("RUN_SYNC_TIMEOUT", 30.0)

# ---------------------------------------------------------------------------------------------------------
# Functions and jobs
# ---------------------------------------------------------------------------------------------------------
FUNCTION_MAX_CODE_BYTES = env_int("FUNCTION_MAX_CODE_BYTES", 5 * 1024 * 1024, minimum=1)
FUNCTION_MAX_UNPACKED_BYTES = env_int("FUNCTION_MAX_UNPACKED_BYTES", 20 * 1024 * 1024, minimum=1)
FUNCTION_MAX_FILES = env_int("FUNCTION_MAX_FILES", 500, minimum=1)
JOB_INPUT_MAX_BYTES = env_int("JOB_INPUT_MAX_BYTES", 1024 * 1024, minimum=1)
JOB_PAYLOAD_ENV_MAX_BYTES = env_int("JOB_PAYLOAD_ENV_MAX_BYTES", 64 * 1024, minimum=0)
JOB_DEFAULT_MEMORY_MB = env_int("JOB_DEFAULT_MEMORY_MB", 256, minimum=16)
JOB_MAX_MEMORY_MB = env_int("JOB_MAX_MEMORY_MB", 4096, minimum=16)
JOB_DEFAULT_TIMEOUT = env_int("JOB_DEFAULT_TIMEOUT", 60, minimum=1)
JOB_CPUS = env_float("JOB_CPUS", 1.0)
JOB_PIDS_LIMIT = env_int("JOB_PIDS_LIMIT", 64, minimum=4)
JOB_TMPFS_MB = env_int("JOB_TMPFS_MB", 64, minimum=1)
JOB_OUTPUT_LIMIT_BYTES = env_int("JOB_OUTPUT_LIMIT_BYTES", 1024 * 1024, minimum=1024)
JOB_RESULT_MAX_BYTES = env_int("JOB_RESULT_MAX_BYTES", 1024 * 1024, minimum=1024)
# How long past its timeout a `running` job may stay before it is declared lost (its worker died).
JOB_LOST_GRACE_SECONDS = env_int("JOB_LOST_GRACE_SECONDS", 60, minimum=0)
JOB_RUNTIME_IMAGE = env_str("JOB_RUNTIME_IMAGE", "infra-ainode-runtime:bookworm-1")
# Host folder for each job's code and sockets; it is bind-mounted into the job container, so it must be a path
# the Docker engine sees (the worker and the engine share a host).
# Each job's gateway socket is JOB_WORK_ROOT/<job uuid>/run/gateway.sock, and a Unix socket path holds at most
# 107 bytes: the default moves to /tmp when the checkout's path is too deep, and a root set too long is refused.
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
# (the default one from the start, others once a job asked for them; at most WARM_POOL_PROFILES), each used by one
# job only. 0 turns the pool off: every job creates its container (the cold path).
WARM_POOL_SIZE = env_int("WARM_POOL_SIZE", 0, minimum=0)
WARM_POOL_PROFILES = env_int("WARM_POOL_PROFILES", 4, minimum=1)
WARM_POOL_MAX_AGE_SECONDS = env_int("WARM_POOL_MAX_AGE_SECONDS", 600, minimum=1)

# ---------------------------------------------------------------------------------------------------------
# AI nodes and models
# ---------------------------------------------------------------------------------------------------------
AI_NODE_URL = env_str("AI_NODE_URL", "http://127.0.0.1:8090")
AI_NODE_KIND = env_str("AI_NODE_KIND", "openai")
AI_NODE_TIMEOUT = env_int("AI_NODE_TIMEOUT", 2000, minimum=1)
DEFAULT_MODEL_ID = env_str("DEFAULT_MODEL_ID", "smollm2:135m")
AI_NODES = env_str("AI_NODES", "")
# Seconds between catalogue syncs (Celery beat, task models_catalog.sync_models); 0 turns the schedule off.
MODEL_SYNC_INTERVAL = env_int("MODEL_SYNC_INTERVAL", 60, minimum=0)
# Periodic work, run by `celery beat` (or a worker started with -B): keep the catalogue fresh, and fail the
# jobs whose worker vanished. A run that waited longer than one interval in the queue is stale: the next replaces it.
CELERY_BEAT_SCHEDULE = {
    "recover-lost-jobs": {
        "task": "jobs.recover_lost_jobs",
        "schedule": 60.0,
        "options": {"queue": JOB_QUEUE, "routing_key": JOB_QUEUE, "expires": 60},
    },
}
if MODEL_SYNC_INTERVAL:
    CELERY_BEAT_SCHEDULE["sync-models"] = {
        "task": "models_catalog.sync_models",
        "schedule": float(MODEL_SYNC_INTERVAL),
        "options": {"queue": JOB_QUEUE, "routing_key": JOB_QUEUE, "expires": MODEL_SYNC_INTERVAL},
    }

# Model calls from jobs: the longest a call may take, and the most tokens one call may generate.
AI_CALL_TIMEOUT = env_int("AI_CALL_TIMEOUT", 120, minimum=1)
AI_MAX_OUTPUT_TOKENS = env_int("AI_MAX_OUTPUT_TOKENS", 2048, minimum=1)
GATEWAY_MAX_BODY_BYTES = env_int("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
GATEWAY_MAX_CONCURRENT_CALLS = env_int("GATEWAY_MAX_CONCURRENT_CALLS", 4, minimum=1)

# ---------------------------------------------------------------------------------------------------------
# Billing: prices are ModelPrice rows (admin); a call's cost is fixed in this currency when it is recorded.
# ---------------------------------------------------------------------------------------------------------
BILLING_CURRENCY = env_str("BILLING_CURRENCY", "USD")
if not (len(BILLING_CURRENCY) == 3 and BILLING_CURRENCY.isascii() and BILLING_CURRENCY.isalpha()
        and BILLING_CURRENCY.isupper()):
    raise ImproperlyConfigured(f"BILLING_CURRENCY must be a three-letter ISO 4217 code, got {BILLING_CURRENCY!r}")
