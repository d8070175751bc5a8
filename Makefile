# hachat: build, test, demo, image, proto, bench.
#
# `make test` is what CI runs (.ci/run). It installs what the tests need when it
# is missing (Chromium, HAProxy and Prometheus from Debian, the Go modules), then runs:
#   1. every package except e2e with the race detector, two packages at a time;
#   2. the end-to-end tests (e2e/...), one package at a time. These start real
#      hachat processes (built once per test binary, without -race: the race
#      detector multiplies the children's CPU and memory on a 2-core machine)
#      while the test process itself, which holds the clients and the workload
#      checker, runs with -race;
#   3. where a Docker engine and docker-compose are present (they are on this
#      project's machines), the container deployment test (test-docker).
# The whole run stays well under 20 minutes on 2 cores.

SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

GO        ?= go
BIN       := bin/hachat
IMAGE     ?= hachat:dev
UNIT_TIMEOUT ?= 10m
E2E_TIMEOUT  ?= 15m
DOCKER_TIMEOUT ?= 15m
# Packages tested by test-unit: everything but the end-to-end tests.
UNIT_PKGS = $$($(GO) list ./... | grep -v '/e2e')

.PHONY: all build test test-unit test-e2e test-docker run demo image proto bench bench-compare bench-web deps otelcol tools clean k8s

all: build

## build: the static hachat binary in bin/hachat, built exactly as the
## end-to-end tests build theirs (CGO_ENABLED=0, no -trimpath: see
## e2e/harness.Binary and its TestMakeBuildLikeTheTests), so that after
## `make test` it only links. -v lists each package compiled now.
build:
	@echo "make: building $(BIN) (CGO_ENABLED=0 go build; packages compiled now are listed, cached ones are not)"
	CGO_ENABLED=0 $(GO) build -v -o $(BIN) ./cmd/hachat
	@echo "make: built $$($(BIN) --version)"

## deps: what the tests need: Chromium, HAProxy, Prometheus, PostgreSQL and iptables (apt-get, as root), the Go
## modules and the test OpenTelemetry Collector (otelcol).
deps: otelcol
	@if ! command -v chromium >/dev/null || ! command -v haproxy >/dev/null; then \
		echo "installing chromium and haproxy with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium haproxy </dev/null; \
	fi
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
		echo "installing prometheus (and promtool) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus </dev/null; \
	fi
	@if [ ! -x /usr/lib/postgresql/15/bin/postgres ] || ! id postgres >/dev/null 2>&1; then \
		echo "installing postgresql (the UCS store of --ucs-store postgres) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql </dev/null; \
	fi
	@if ! command -v iptables >/dev/null; then \
		echo "installing iptables (hachat chaos's partitions) with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables </dev/null; \
	fi
	$(GO) mod download
	cd deploy && $(GO) mod download

## otelcol: the OpenTelemetry Collector of the e2e tests (e2e/otelcol, its own
## module: OTLP receiver + file exporter), built once and cached as
## $(OTELCOL_CACHE)/otelcol-<hash of its go.sum and main.go>, the path that
## e2e/harness.CollectorCachePath computes; rebuilt only when they change
## (the first build takes a few minutes on 2 cores).
OTELCOL_CACHE ?= $${XDG_CACHE_HOME:-$$HOME/.cache}/hachat
otelcol:
	@bin="$(OTELCOL_CACHE)/otelcol-$$(cat e2e/otelcol/go.sum e2e/otelcol/main.go | sha256sum | cut -c1-16)"; \
	if [ ! -x "$$bin" ]; then \
		echo "make: building the test OpenTelemetry Collector (e2e/otelcol) into $$bin, once: a few minutes"; \
		mkdir -p "$$(dirname "$$bin")" && \
		(cd e2e/otelcol && CGO_ENABLED=0 $(GO) build -o "$$bin.tmp" .) && mv "$$bin.tmp" "$$bin"; \
	fi

## test: deps, then unit tests with -race, then the end-to-end tests. Both
## suites always run (a unit failure does not hide the e2e results); the
## target fails if either did.
test: deps
	@rc=0; \
	$(MAKE) --no-print-directory test-unit || rc=1; \
	$(MAKE) --no-print-directory test-e2e || rc=1; \
	if command -v docker-compose >/dev/null && docker info >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory test-docker || rc=1; \
	else echo "test-docker: skipped (no Docker engine or docker-compose here)"; fi; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED (see the FAIL lines above)"; fi; \
	exit $$rc

## test-unit: every package except e2e, with the race detector; then go vet
## of the whole module, of bench/jetstream (its own module: the JetStream
## anchor, kept out of the hachat binary) and of e2e/otelcol (the test
## Collector's module), so that they do not rot; then the deploy module (its
## own module, so that hachat's go.mod carries no k8s.io), vetted and tested:
## the Kubernetes manifests decoded strictly against the API types, the
## Prometheus rules through promtool, the Grafana dashboard.
test-unit:
	$(GO) test -race -count=1 -p 2 -timeout $(UNIT_TIMEOUT) $(UNIT_PKGS)
	$(GO) vet ./...
	cd bench/jetstream && $(GO) vet ./...
	cd e2e/otelcol && $(GO) vet ./...
	cd deploy && $(GO) vet ./... && $(GO) test -race -count=1 -timeout $(UNIT_TIMEOUT) ./...

## k8s: the Kubernetes manifests (deploy/k8s/base, a kustomize base) as one
## multi-document YAML stream on stdout: `make -s k8s | kubectl apply -f -`.
k8s:
	@cd deploy && $(GO) run ./cmd/k8s-render

## test-e2e: end-to-end tests with real processes and headless Chromium.
test-e2e:
	$(GO) test -race -count=1 -p 1 -timeout $(E2E_TIMEOUT) ./e2e/...

## test-docker: the container deployment (deploy/compose.yaml) on this machine's Docker
## engine: kill -9 of the primary container mid-chat, with and without the control plane, and
## after one etcd member's container (TestEtcdMemberKilled);
## the backup's, then the primary's container cut off the cluster network for 8 s under
## load (HACHAT_PARTITION_RUNS=5 for the issue's five 15 s cuts of each: about 8 minutes).
test-docker:
	$(GO) test -race -tags docker -count=1 -timeout $(DOCKER_TIMEOUT) ./e2e/docker/

## run, demo: the whole cluster on this machine, each part its own process.
run demo: build
	@echo "make: starting the demo: $(BIN) demo (Ctrl-C stops it)"
	@$(BIN) demo

## image: the hachat:dev image (FROM scratch + the static binary built here).
image: build
	docker build -t $(IMAGE) .
	docker run --rm $(IMAGE) --help

## proto: regenerate chatcore/chatpb from its .proto files.
proto: tools
	protoc -I . \
		--go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative \
		chatcore/chatpb/*.proto

tools:
	@command -v protoc-gen-go >/dev/null || $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	@command -v protoc-gen-go-grpc >/dev/null || $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	@command -v protoc >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler </dev/null)

## bench: the chat benchmark on the pair.
bench: build
	$(BIN) bench chat

## bench-compare: the chat benchmark against the JetStream anchor (bench/jetstream,
## its own module) in the same run: 3 alternating rounds, medians and ratios.
bench-compare: build
	$(BIN) bench chat --sessions 10000 --messages 60000 --concurrency 128 --anchor bench/jetstream --rounds 3

## bench-web: the customer path (webapi + interaction) at 10,000 concurrent chats.
bench-web: build
	$(BIN) bench web --chats 10000

clean:
	rm -rf bin artifacts
