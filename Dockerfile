# One image with the three binaries: quarry-worker, quarry, quarry-fake-provider.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir /out \
 && cp target/release/quarry-worker target/release/quarry target/release/quarry-fake-provider /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 quarry
COPY --from=build /out/ /usr/local/bin/
COPY examples/ /opt/quarry/examples/
COPY schemas/examples/ /opt/quarry/schemas/examples/
USER quarry
ENTRYPOINT ["/usr/local/bin/quarry-worker"]
