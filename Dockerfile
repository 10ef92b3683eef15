# One image, four services: `capsule serve <auth|project|deploy|gateway>`.
FROM rust:1-bookworm AS build
WORKDIR /src
# libpq is built into the binary (pq-src), against the system's OpenSSL.
RUN apt-get update && apt-get install -y --no-install-recommends libssl-dev pkg-config && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p capsule-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates postgresql-client bubblewrap util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 capsule
COPY --from=build /src/target/release/capsule /usr/local/bin/capsule
USER capsule
ENTRYPOINT ["capsule"]
