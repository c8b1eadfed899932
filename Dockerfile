# ysyncd container image.
#
#   docker build -t ysyncd .
#   docker run -p 1234:1234 -v ysyncd-data:/data ysyncd
#   docker run -p 1234:1234 -v ysyncd-data:/data \
#       -e YSYNCD_AUTH=jupyterhub -e JUPYTERHUB_API_URL=http://hub:8081/hub/api ysyncd
#
# The database lives on the /data volume. To bind-mount a host directory
# instead, make it writable by UID 10001 first.
FROM python:3.12-slim

LABEL org.opencontainers.image.title="ysyncd" \
      org.opencontainers.image.description="Durable Yjs sync daemon: y-websocket protocol, SQLite storage" \
      org.opencontainers.image.licenses="BSD-3-Clause"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed UID/GID, so a host directory can be prepared for it. /data is created
# and chowned before VOLUME, because a fresh named volume copies the image's
# directory, ownership included.
RUN groupadd --gid 10001 ysyncd \
 && useradd --uid 10001 --gid ysyncd --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin ysyncd \
 && mkdir /data \
 && chown ysyncd:ysyncd /data

# Only the files the wheel build reads (see .dockerignore), so edits to tests,
# examples or docs do not invalidate this layer.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ysyncd ./ysyncd
RUN pip install --no-cache-dir ".[auth,cluster,jupyter,uvloop]"

# Numeric, so runtimes that check for a non-root user (Kubernetes
# runAsNonRoot) can verify it without reading /etc/passwd.
USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 1234

# The slim image has no curl; use the stdlib. The proxy handler is emptied so
# an inherited HTTP_PROXY cannot route this loopback request elsewhere. Any
# exception (refused, timeout, non-2xx) exits 1, which Docker reads as unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; r = u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:1234/healthz', timeout=4); sys.exit(0 if r.status == 200 and r.read().strip() == b'ok' else 1)"]

# ysyncd handles SIGTERM itself (flush commits, close peers with 1001, exit 0),
# so Docker's default stop signal is the right one, even as PID 1.
# A container must listen on 0.0.0.0 to be reachable at all, so the default
# command admits anyone, for a first try; choose a provider for real use with
# YSYNCD_AUTH and its settings (README, "Access control").
ENV YSYNCD_HOST=0.0.0.0 \
    YSYNCD_DB=/data/ysyncd.db \
    YSYNCD_ALLOW_UNAUTHENTICATED=1
CMD ["ysyncd", "serve"]
