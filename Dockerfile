# crm-realtime sidecar image: runs `crm-realtime serve`, configured only by
# SIDECAR_* environment variables (see README, "Settings"; for compose, see
# deploy/sidecar.env.example).
#
#   docker build -t crm-realtime .
#   docker run --env-file deploy/sidecar.env -p 3001:3001 crm-realtime
#
# Three stages: the first fetches the official socket.io-client browser build
# from the npm registry (served at /client/socket.io.min.js; never committed),
# the second builds the wheel (sql/ travels inside it as package data), the last
# installs it into a clean slim image and runs as an unprivileged user.

FROM node:20-slim AS client
WORKDIR /client
COPY tests/js/package.json tests/js/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY sidecar/ sidecar/
COPY sql/ sql/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
COPY --from=client /client/node_modules/socket.io-client/dist /usr/share/crm-realtime/socket.io-client/dist
RUN pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin crm-realtime
USER crm-realtime
# Inside a container the server must listen on every interface; the port is
# the one docker-compose.yml publishes and its health check probes.
ENV SIDECAR_HOST=0.0.0.0 \
    SIDECAR_PORT=3001
EXPOSE 3001
# Exec form: the sidecar is PID 1 and gets SIGTERM itself (it handles it and
# closes its sockets and the LISTEN connection before exiting).
ENTRYPOINT ["crm-realtime"]
CMD ["serve"]
