# lockmgr daemon image: `docker build -t lockmgr .`, then `docker run lockmgr daemon` (the default)
# or any other command (`docker run --rm lockmgr list-locks --nats-url nats://...`).

# Build: the daemon package (daemon/), compiled, with the exact dependency versions of the
# workspace's lockfile. node:20 has the compilers the native SQLite modules fall back to.
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json ./
COPY shared shared
COPY client client
COPY daemon daemon
COPY cli cli
# 1. The dev tools, to build the daemon package (daemon/dist, as `npm pack -w daemon` packs it).
# 2. Only what the daemon package needs at run time, from the lockfile; scripts off (the root's
#    `prepare` would need the dev tools), then the two native modules built.
RUN npm ci --no-audit --no-fund --ignore-scripts \
    && npm run build -w daemon \
    && rm -rf node_modules \
    && npm ci --omit=dev --no-audit --no-fund --ignore-scripts -w daemon \
    && npm rebuild better-sqlite3 sqlite3 \
    && test -f daemon/dist/cli/main.js

FROM node:20-bookworm-slim
# wget for the healthcheck: it asks the daemon's /readyz without starting a Node process.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*
# Metrics and health checks over HTTP on every interface of the container; the port is published
# only where asked (docker run -p 127.0.0.1:9464:9464), and Prometheus scrapes it on the container network.
ENV NODE_ENV=production \
    LOCKMGR_DB=/data/lockmgr.sqlite \
    LOCKMGR_LOG_FORMAT=json \
    LOCKMGR_HTTP_LISTEN=0.0.0.0:9464
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/daemon/package.json daemon/package.json
COPY --from=build /app/daemon/dist daemon/dist
COPY config config
RUN ln -s /app/daemon/dist/cli/main.js /usr/local/bin/lockmgr \
    && mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
EXPOSE 9464
# Healthy when the daemon in this container is ready: its own database and NATS connections answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["wget", "-q", "-O-", "--content-on-error", "http://127.0.0.1:9464/readyz"]
# SIGTERM drains (docker stop); give it LOCKMGR_DRAIN_TIMEOUT plus a margin with --stop-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lockmgr"]
CMD ["daemon"]
