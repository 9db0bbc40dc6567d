# Build stage: the `dist` profile's binary (link-time optimized, stripped). The toolchain is
# pinned (the version Cargo.toml's rust-version names); pingora's compression code needs cmake.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, in their own layer: a change to the gateway's sources does not rebuild
# them. Stub targets stand in for the sources until then.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in $(awk '/^\[\[bench\]\]/ { getline; gsub(/name = |"/, ""); print }' Cargo.toml); do \
         echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --profile dist --locked --bin switchyard \
    && rm -rf src benches
COPY src ./src
COPY conf ./conf
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --profile dist --locked --bin switchyard

# Runtime stage: the binary, the configuration, CA certificates for https upstreams, and an
# unprivileged user. No shell tools are needed: the health check is the binary itself.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home switchyard
COPY --from=build /src/target/dist/switchyard /usr/local/bin/switchyard
COPY conf /etc/switchyard
USER switchyard
ENV SWITCHYARD_LISTEN=0.0.0.0:8080
EXPOSE 8080
# SIGTERM drains in-flight requests for up to server.drain_timeout (30 s): give `docker stop`
# longer than that (`--stop-timeout 40`, or `stop_grace_period` in compose).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["/usr/local/bin/switchyard", "healthcheck", "--url", "http://127.0.0.1:8080/health/live"]
ENTRYPOINT ["/usr/local/bin/switchyard"]
