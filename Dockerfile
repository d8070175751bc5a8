# hachat image: one static binary on an empty base.
#
# Why a single FROM scratch stage instead of a golang build stage: the Docker
# engine this project is built on cannot pull any image (no registry is
# reachable and `docker images` starts empty), so no golang or distroless base
# exists to build in. `make image` therefore builds the static binary on the
# host (CGO_ENABLED=0, no libc needed) and this file only copies it in. With a
# registry, a `FROM golang:1.26 AS build` stage running the same `make build`
# would slot in above this one unchanged.
FROM scratch
COPY bin/hachat /hachat
# Parts listen on 127.0.0.1 by default; in containers pass --http/--grpc
# addresses on the container's interface (see deploy/compose.yaml).
ENTRYPOINT ["/hachat"]
CMD ["--help"]
