# syntax=docker/dockerfile:1
# The image deploy/kubernetes runs: the operator, the node agent, and the daemon as a Deployment.
#   docker build -t REGISTRY/wattscale:TAG .
# then point the manifests at it (docs/cluster.md, "Install"). Wheels are built in a first stage and mounted, not
# copied, into the second (BuildKit), so the image holds no wheel, source tree or pip cache. The base is pinned to a
# Debian release; time-zone names come from the tzdata wheel, whatever the system holds.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY queuemodels ./queuemodels
COPY tuner ./tuner
COPY actuators ./actuators
COPY simulator ./simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[cluster]'

FROM python:3.11-slim-bookworm
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'wattscale[cluster]'
# the operator and the Deployment run as 65532 (their securityContext); the agent runs as root for NVML's limits
USER 65532:65532
ENTRYPOINT ["wattscale"]
