# The image deploy/kubernetes runs: the operator, the node agent, and the daemon as a Deployment.
#   docker build -t REGISTRY/wattscale:TAG .
# then point the manifests at it (docs/cluster.md, "Install"). Wheels are built in a first stage, so the image
# holds no compiler, no source tree and no pip cache.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY queuemodels ./queuemodels
COPY tuner ./tuner
COPY actuators ./actuators
COPY simulator ./simulator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[cluster]'

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'wattscale[cluster]' && rm -rf /wheels
# the operator and the Deployment run as 65532 (their securityContext); the agent runs as root for NVML's limits
USER 65532:65532
ENTRYPOINT ["wattscale"]
