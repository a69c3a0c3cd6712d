# The boxoffice image: docker build -t ghcr.io/boxoffice/boxoffice:0.1.0 .
# The same image runs shard nodes and fronts (deploy/kubernetes, docs/operations.md). Run alone it is one node:
#   docker run -p 8080:8080 -v boxoffice-data:/var/lib/boxoffice ghcr.io/boxoffice/boxoffice:0.1.0 \
#     serve --listen 0.0.0.0:8080 --data-dir /var/lib/boxoffice/data
# (the default --listen is 127.0.0.1:8080, which nothing outside the container reaches).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts (BuildKit) keep the crates and the target dir between builds; the binary is copied out of the
# cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p api \
    && install -m 0755 target/release/boxoffice /usr/local/bin/boxoffice

FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 boxoffice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/boxoffice --no-create-home \
       --shell /usr/sbin/nologin boxoffice \
    && install -d -o boxoffice -g boxoffice -m 0750 /var/lib/boxoffice
COPY --from=build /usr/local/bin/boxoffice /usr/local/bin/boxoffice
USER 10001:10001
# The default --data-dir ./data is /var/lib/boxoffice/data here: mount a volume on /var/lib/boxoffice.
WORKDIR /var/lib/boxoffice
# 8080: the public HTTP API (--listen); 9101: the internal API of a shard node (--internal-listen).
EXPOSE 8080 9101
STOPSIGNAL SIGTERM
ENTRYPOINT ["boxoffice"]
CMD ["serve"]
