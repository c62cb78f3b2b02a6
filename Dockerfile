# The kplex image: one static-enough binary for every role (`kplex serve`,
# `kplex syncer`, `kplex controllers`, `kplex dns`). Built from the repo:
#   docker build -t kplex:dev .
# (e2e/kind/run builds it and loads it into its kind cluster for
# deploy/host/dns.yaml.)
FROM rust:1-bookworm AS build
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kplex-apiserver --bin kplex \
    && cp target/release/kplex /kplex

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /kplex /usr/local/bin/kplex
# Any unprivileged user: kplex dns listens on 5353, kplex serve on 6443.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kplex"]
