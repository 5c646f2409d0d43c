# The application image: the web API (gunicorn), the Celery worker and Celery beat; the command chooses.
#
#   docker build -t infra-ainode:local .
#   docker run ... infra-ainode:local web|worker|beat|migrate|manage ARGS...
#
# Python 3.11 from Debian bookworm in a virtual environment at /opt/venv. Where no registry answers,
# scripts/build-app-image.sh builds a base with debootstrap (python3, the venv, the requirements already in it)
# and then this same file on top of it with --build-arg BASE=...: the steps below see the venv and skip the
# install. Keep the two in step.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LANG=C.UTF-8 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN if [ ! -x /opt/venv/bin/python ]; then \
        apt-get update \
     && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
     && apt-get clean && rm -rf /var/lib/apt/lists/* \
     && python3 -m venv /opt/venv; \
    fi

# Requirements first, so that a code change does not reinstall them. On the offline base they are installed
# already and pip only checks them.
COPY requirements.txt /app/requirements.txt
RUN pip install -q --no-cache-dir --disable-pip-version-check -r /app/requirements.txt

# The service user. The worker needs the Docker socket, and whoever may use that socket is root on the host in
# all but name: run the worker with --group-add <the socket's group> (or as root), web and beat as this user.
# The service user is also in group 10001, the job container's (jobs/sandbox/runtime_user.py): a worker that is not
# root can then give a job's folders and its gateway socket to that group alone, instead of opening them to every
# local user.
RUN groupadd --gid 10002 app \
 && groupadd --gid 10001 ainode-job \
 && useradd --uid 10002 --gid 10002 --groups 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
 && install -d -o 10002 -g 10002 -m 0755 /var/lib/infra-ainode /var/lib/infra-ainode/prometheus

COPY . /app
WORKDIR /app
# Static files (the admin's) are collected at build time, into the image, for the app to serve.
RUN chmod 0755 /app/scripts/container-entrypoint.sh \
 && VAR_DIR=/var/lib/infra-ainode python manage.py collectstatic --noinput -v0

# Production unless told otherwise: SECRET_KEY must be given (the settings refuse to start without one), cookies
# are secure, HSTS and the HTTPS redirect are on (the probes and /metrics are exempt from the redirect).
ENV ENVIRONMENT=production DJANGO_SETTINGS_MODULE=infra_ainode.settings VAR_DIR=/var/lib/infra-ainode \
    PROMETHEUS_MULTIPROC_DIR=/var/lib/infra-ainode/prometheus WEB_BIND=0.0.0.0:8000

# The uid alone, so that the engine adds the user's other groups (10001) from /etc/group.
USER 10002
EXPOSE 8000
ENTRYPOINT ["/app/scripts/container-entrypoint.sh"]
CMD ["web"]
