# syntax=docker/dockerfile:1
# Sidecar image: `docker build -t sidecar .` then `docker run -p 127.0.0.1:9464:9464 sidecar`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# bubblewrap gives plugins their own mount/PID namespaces (strict mode needs it; see SECURITY.md: the
# container runtime must allow user namespaces for it to work under a non-root USER).
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid so volumes and Kubernetes securityContext (runAsUser: 10001) agree.
RUN groupadd --system --gid 10001 sidecar \
 && useradd --system --uid 10001 --gid sidecar --home-dir /var/lib/sidecar --shell /usr/sbin/nologin sidecar \
 && install -d -o sidecar -g sidecar -m 0750 /var/lib/sidecar

WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
RUN pip install . && rm -rf /src

WORKDIR /var/lib/sidecar
USER sidecar:sidecar

# Listen on every interface inside the container (the default bind is loopback); publish the port on the
# host's loopback only, and give a token (SIDECAR_API_TOKEN_FILE: a mounted secret) before exposing it further.
ENV SIDECAR_DATA_DIR=/var/lib/sidecar \
    SIDECAR_BIND=0.0.0.0:9464
EXPOSE 9464

# The slim image has no curl: probe with the standard library (urlopen raises on non-2xx answers).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]

CMD ["sidecar", "serve"]
