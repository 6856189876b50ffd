# vtpm-operator image: the operator and its pinned dependencies (pyproject.toml) on python:3.11-slim.
# Build: docker build -t vtpm-operator:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /build
COPY pyproject.toml ./
COPY operator/ ./operator/
RUN pip install --no-cache-dir . \
    && cd / && rm -rf /build

RUN groupadd --system --gid 10001 vtpm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vtpm

WORKDIR /
USER 10001:10001
# Liveness (:8080/healthz) and Prometheus metrics (:9100).
EXPOSE 8080 9100
ENTRYPOINT ["vtpm-operator"]
CMD ["run", "--all-namespaces"]
