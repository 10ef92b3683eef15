# One image, four services: `capsule serve <auth|project|deploy|gateway>`.
# The compiler services/capsule/link-order.txt was made with (its first
# line): another one names other symbols, and the binary is not ordered.
FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends libpq-dev libclang-dev protobuf-compiler && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p capsule-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 ca-certificates postgresql-client bubblewrap util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 capsule
COPY --from=build /src/target/release/capsule /usr/local/bin/capsule
USER capsule
ENTRYPOINT ["capsule"]
