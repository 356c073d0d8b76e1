# Builds the agent-manager, the scheduler, the web console, the reference
# agent and the health-check probe into one slim runtime image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
      -p shepherd-agent-manager -p shepherd-scheduler -p shepherd-console \
      -p shepherd-agent-sdk -p shepherd-platform --bins

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home shepherd \
 && useradd --system --uid 10002 --create-home shepherd-agent \
 && mkdir -p /var/lib/shepherd/agent-logs && chown shepherd /var/lib/shepherd/agent-logs
COPY --from=build \
     /src/target/release/agent-manager \
     /src/target/release/scheduler \
     /src/target/release/shepherd-console \
     /src/target/release/shepherd-agent \
     /src/target/release/shepherd-healthcheck \
     /usr/local/bin/
# The scheduler and the console run as `shepherd`. The agent-manager runs
# as root (compose: `user: root`) only so that it can start every agent as
# the unprivileged `shepherd-agent` (SHEPHERD_AGENT_USER): no agent can then
# read the manager's memory, environment or files.
USER shepherd
