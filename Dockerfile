# syntax=docker/dockerfile:1
#
# canary-forwarder container image.
#
#   docker build -t canary-forwarder .
#   docker run -d --name canary-forwarder -p 8080:8080 --stop-timeout 45 \
#     -e CANARY_WEBHOOK_SECRET \
#     -v canary-forwarder-state:/var/lib/canary-forwarder \
#     -v "$PWD/config.yaml:/etc/canary-forwarder/config.yaml:ro" \
#     canary-forwarder
#
# Stopping: on SIGTERM the daemon gives in-flight webhook requests and sends one graceful timeout
# (30 s) together, counted from the signal whatever is under way (a reload is cut short), then
# closes the store. Docker's default of 10 s before SIGKILL is too short: use `docker stop -t 45`,
# `docker run --stop-timeout 45`, or in compose `stop_grace_period: 45s`. A SIGKILL loses no
# stored event, but repeats an interrupted send. A second SIGTERM stops it at once, still closing
# the store.
#
# No secret is baked in: the default config reads ${CANARY_WEBHOOK_SECRET} from the environment
# at start-up; ${file:/run/secrets/NAME} reads a mounted secret file instead.
# See docs/operations.md, "The container".

# Build stage: the project's wheel and the wheels of all its dependencies.
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY forwarder ./forwarder
RUN pip wheel --wheel-dir /wheels .

# Runtime stage: the wheels installed offline, nothing else from the build.
FROM python:3.11-slim AS runtime
LABEL org.opencontainers.image.title="canary-forwarder" \
      org.opencontainers.image.description="Forward Thinkst Canary webhooks to your SIEM" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels canary-forwarder

# A fixed, unprivileged uid/gid, so a host directory or a Kubernetes securityContext can match it.
RUN groupadd --system --gid 10001 canary-forwarder \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin canary-forwarder \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/canary-forwarder \
 && install -d -m 0755 /etc/canary-forwarder
# A working default: listens on 0.0.0.0:8080/canary and keeps JSON lines in the volume.
# Mount your own config over it, read-only.
COPY --chmod=0644 config/container.yaml /etc/canary-forwarder/config.yaml

# Bytecode was compiled at install time; at run time nothing writes outside the volume.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CANARY_FORWARDER_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz

USER 10001:10001
WORKDIR /var/lib/canary-forwarder
VOLUME ["/var/lib/canary-forwarder"]
EXPOSE 8080
STOPSIGNAL SIGTERM
# The slim image has no curl; Python's standard library is enough. open() raises on a non-2xx
# answer or no answer. No proxy: an HTTPS_PROXY set for the outputs must not carry the probe.
# An https:// URL (listen.tls) is probed without checking the certificate: the probe asks the
# container's own loopback, which no certificate names, with nothing in between to guard against.
# Change CANARY_FORWARDER_HEALTHCHECK_URL if you change listen.port or set listen.tls.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; r.build_opener(r.ProxyHandler({}), r.HTTPSHandler(context=c)).open(os.environ['CANARY_FORWARDER_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["canary-forwarder"]
CMD ["run", "-c", "/etc/canary-forwarder/config.yaml"]
