# lockmgr daemon image: `docker build -t lockmgr .`, then `docker run lockmgr daemon` (the default)
# or any other command (`docker run --rm lockmgr list-locks --nats-url nats://...`).

# Build: node:20 has the compilers the native SQLite modules fall back to.
FROM node:20-bookworm AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
COPY shared shared
COPY client client
COPY daemon daemon
COPY cli cli
COPY examples examples
# npm ci installs the exact lockfile and runs the `prepare` script: `npm run build` (tsc into dist/).
RUN npm ci --no-audit --no-fund && test -f dist/cli/main.js && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    LOCKMGR_DB=/data/lockmgr.sqlite \
    LOCKMGR_LOG_FORMAT=json
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist dist
COPY config config
RUN chmod +x dist/cli/main.js && ln -s /app/dist/cli/main.js /usr/local/bin/lockmgr \
    && mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# Healthy when the daemon in this container answers on NATS and reaches its database.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["lockmgr", "ping", "--local"]
# SIGTERM drains (docker stop); give it LOCKMGR_DRAIN_TIMEOUT plus a margin with --stop-timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lockmgr"]
CMD ["daemon"]
