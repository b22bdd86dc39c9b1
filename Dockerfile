# lockmgr daemon image: `docker build -t lockmgr .`, then `docker run lockmgr daemon` (the default)
# or any other command (`docker run --rm lockmgr list-locks --nats-url nats://...`).

# Build: the daemon package as it is published (npm pack), installed into /app. node:20 has the
# compilers the native SQLite modules fall back to.
FROM node:20-bookworm AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY shared shared
COPY client client
COPY daemon daemon
COPY cli cli
# npm ci installs the workspace's exact lockfile (without building the root's dev tree); npm pack
# runs the daemon package's `prepack` (tsc into daemon/dist).
RUN npm ci --no-audit --no-fund --ignore-scripts \
    && npm pack -w daemon --pack-destination /tmp \
    && mkdir /app && cd /app && echo '{"name":"lockmgr-image","private":true}' > package.json \
    && npm install --omit=dev --no-audit --no-fund /tmp/lockmgr-daemon-*.tgz \
    && test -f node_modules/lockmgr-daemon/dist/cli/main.js

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    LOCKMGR_DB=/data/lockmgr.sqlite \
    LOCKMGR_LOG_FORMAT=json
WORKDIR /app
COPY --from=build /app/node_modules node_modules
COPY config config
RUN ln -s /app/node_modules/lockmgr-daemon/dist/cli/main.js /usr/local/bin/lockmgr \
    && mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# Healthy when the daemon in this container answers on NATS and reaches its database.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["lockmgr", "ping", "--local"]
# SIGTERM drains (docker stop); give it LOCKMGR_DRAIN_TIMEOUT plus a margin with --stop-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lockmgr"]
CMD ["daemon"]
