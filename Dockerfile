# vtpm-operator image: Debian's python3 and the operator with the dependencies pinned, with hashes,
# in requirements.lock (regenerate it with hack/lock-deps.sh after changing pyproject.toml).
#
#   buildah bud -t vtpm-operator:0.1.0 .        (or: docker build -t vtpm-operator:0.1.0 .)
#
# The final image has no pip, no setuptools and no compiler; it runs as uid 10001 and works on a
# read-only root filesystem. hack/build-image.sh builds it here, with no registry, from a base
# image made locally under the same name as BASE_IMAGE's default.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements.lock ./
# Wheels only (no compiler in the image), every file checked against its hash in the lock.
# A builder whose package index needs settings passes them as build secrets, which never reach
# the image: "pip.conf" (for example `[global]` with `cert = /run/secrets/pip-ca`) and "pip-ca".
RUN --mount=type=secret,id=pip.conf,target=/etc/pip.conf --mount=type=secret,id=pip-ca \
    python3 -m venv /opt/vtpm-operator \
    && /opt/vtpm-operator/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
       --require-hashes --no-deps --only-binary=:all: -r requirements.lock
COPY pyproject.toml ./
COPY operator/ ./operator/
# The project itself, built with the locked setuptools already in the venv and nothing fetched.
# Then pip and setuptools leave, and every module is compiled with an unchecked hash: the root
# filesystem is read-only at run time, and copied files' mtimes must not invalidate the bytecode.
RUN /opt/vtpm-operator/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
       --no-deps --no-build-isolation --no-index . \
    && /opt/vtpm-operator/bin/pip uninstall --yes --disable-pip-version-check setuptools pip \
    && rm -f /opt/vtpm-operator/bin/[Aa]ctivate* \
    && /opt/vtpm-operator/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
       /opt/vtpm-operator/lib

FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="vtpm-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps a virtual TPM on every vSphere VM a policy selects" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
# python3 only: Debian's python3 package brings neither pip nor ensurepip's wheels.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old \
    && groupadd --system --gid 10001 vtpm \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin vtpm
COPY --from=build /opt/vtpm-operator /opt/vtpm-operator

ENV PATH=/opt/vtpm-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /
USER 10001:10001
# Liveness (:8080/healthz) and Prometheus metrics (:9100).
EXPOSE 8080 9100
ENTRYPOINT ["vtpm-operator"]
CMD ["run", "--all-namespaces"]
