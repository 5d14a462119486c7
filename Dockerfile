# The role images, for users with a registry, one per role from one root
# filesystem:
#   docker build --target statesvc  -t REGISTRY/inferx-statesvc:TAG .
#   docker build --target scheduler -t REGISTRY/inferx-scheduler:TAG .
#   docker build --target gateway   -t REGISTRY/inferx-gateway:TAG .
#   docker build --target nodeagent -t REGISTRY/inferx-nodeagent:TAG .
# (build arguments: VERSION, REVISION, DENO_VERSION).
#
# `deno task images` builds the same images without a registry: the build
# stage below runs its code (deploy/images.ts), and deploy/images_test.ts
# checks that the settings here equal the ones it imports the images with.

ARG DENO_VERSION=2.9.6

FROM denoland/deno:bin-${DENO_VERSION} AS deno

# The root filesystem: Deno and the libraries it links, the sources, the npm
# packages main.ts loads, /etc/passwd, /tmp and /data.
FROM debian:bookworm-slim AS build
COPY --from=deno /deno /usr/local/bin/deno
WORKDIR /src
COPY deno.json deno.lock main.ts ./
COPY src ./src
COPY proto ./proto
COPY config ./config
COPY deploy ./deploy
RUN deno install --frozen && deno run -A deploy/images.ts rootfs /rootfs

FROM scratch AS base
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/ /
COPY --from=build --chown=65532:65532 /rootfs/data /data
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    DENO_DIR=/tmp/deno \
    DENO_NO_UPDATE_CHECK=1 \
    INFERX_DATA_DIR=/data \
    INFERX_BIND=0.0.0.0 \
    GATEWAY_HOST=0.0.0.0 \
    INFERX_SAMPLES=none \
    INFERX_CTL_NAME="docker run --rm IMAGE ctl"
WORKDIR /app
USER 65532:65532
LABEL org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION
ENTRYPOINT ["/usr/local/bin/deno", "run", "-A", "--cached-only", "--node-modules-dir=manual", "/app/main.ts"]

FROM base AS statesvc
ENV RUN_SERVICE=StateSvc
EXPOSE 1237
LABEL org.opencontainers.image.title=inferx-statesvc

FROM base AS scheduler
ENV RUN_SERVICE=Scheduler
EXPOSE 1238 1239
LABEL org.opencontainers.image.title=inferx-scheduler

FROM base AS gateway
ENV RUN_SERVICE=Gateway
EXPOSE 4000
LABEL org.opencontainers.image.title=inferx-gateway
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD ["/usr/local/bin/deno", "eval", "--no-config", "const h = Deno.env.get(\"GATEWAY_HOST\") || \"127.0.0.1\"; const host = h === \"0.0.0.0\" || h === \"::\" ? \"127.0.0.1\" : h.includes(\":\") ? \"[\" + h + \"]\" : h; const r = await fetch(\"http://\" + host + \":\" + (Deno.env.get(\"GATEWAY_PORT\") || \"4000\") + \"/health\"); Deno.exit(r.ok ? 0 : 1);"]

# The node agent drives the node's Docker engine through its socket
# (mounted in) and publishes workers on the node's address.
FROM base AS nodeagent
USER 0:0
ENV RUN_SERVICE=NodeAgent \
    INFERX_RUNTIME=docker
EXPOSE 1233
LABEL org.opencontainers.image.title=inferx-nodeagent
