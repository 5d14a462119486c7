# One image per role, from one multi-stage build:
#   docker build --target statesvc  -t REGISTRY/inferx-statesvc:TAG .
#   docker build --target scheduler -t REGISTRY/inferx-scheduler:TAG .
#   docker build --target gateway   -t REGISTRY/inferx-gateway:TAG .
#   docker build --target nodeagent -t REGISTRY/inferx-nodeagent:TAG .
# The build stage compiles the platform into one binary with `deno task compile`.

FROM denoland/deno:2.5.6 AS build
WORKDIR /src
COPY deno.json ./
COPY main.ts ./
COPY src ./src
COPY proto ./proto
COPY config ./config
RUN deno install && deno task compile

FROM debian:bookworm-slim AS base
WORKDIR /app
COPY --from=build /src/dist/inferx /app/inferx
COPY --from=build /src/proto /app/proto
COPY --from=build /src/config /app/config
ENV INFERX_DATA_DIR=/data \
    INFERX_BIND=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0 \
    INFERX_SAMPLES=none
VOLUME /data
USER 65532:65532
ENTRYPOINT ["/app/inferx"]

FROM base AS statesvc
ENV RUN_SERVICE=StateSvc
EXPOSE 1237

FROM base AS scheduler
ENV RUN_SERVICE=Scheduler
EXPOSE 1238 1239

FROM base AS gateway
ENV RUN_SERVICE=Gateway
EXPOSE 4000

# The node agent talks to the Docker engine on the node (socket mounted in)
# and publishes workers on the node's address.
FROM base AS nodeagent
USER 0:0
ENV RUN_SERVICE=NodeAgent \
    INFERX_RUNTIME=docker
EXPOSE 1233
