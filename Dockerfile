# syntax=docker/dockerfile:1
# Digital Twin Sidecar image: the default image of deploy/helm/twin-sidecar.
#   docker build -t twin-sidecar:0.1.0 .
#   docker run --rm -p 9464:9464 -v "$PWD/config/example.yaml:/etc/twin-sidecar/rules.yaml:ro" twin-sidecar:0.1.0
# Runs as uid 10001 with a read-only root filesystem: it writes only /var/lib/twin-sidecar (SQLite) and /tmp.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# A virtualenv copied whole into the runtime stage: no compilers, caches or sources ship in the image.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-compile . \
    && find /opt/venv -depth -name '__pycache__' -type d -exec rm -rf {} + \
    && /opt/venv/bin/twin-sidecar --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="twin-sidecar" \
      org.opencontainers.image.description="Digital twin sidecar: forecasts, divergence and health from Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 twin \
    && useradd --system --uid 10001 --gid twin --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin twin \
    && mkdir -p /etc/twin-sidecar /var/lib/twin-sidecar \
    && chown twin:twin /var/lib/twin-sidecar
COPY --from=build /opt/venv /opt/venv
WORKDIR /var/lib/twin-sidecar
USER 10001:10001
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["twin-sidecar"]
CMD ["run", "--config", "/etc/twin-sidecar/rules.yaml"]
