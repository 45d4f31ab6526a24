# funnel: make test sets up and runs every test; make run starts funnel.
GO      ?= go
BIN     := bin/funnel
# VERSION and COMMIT are stamped into the binary (funnel --version, INFO
# funnel). A tag sets the version: git tag v0.3.0 && make build.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
# proxy.Version is set too until proxy reads internal/buildinfo itself.
LDFLAGS := -s -w \
	-X github.com/funnel-proxy/funnel/internal/buildinfo.Version=$(VERSION) \
	-X github.com/funnel-proxy/funnel/internal/buildinfo.Commit=$(COMMIT) \
	-X github.com/funnel-proxy/funnel/proxy.Version=$(VERSION)
# make docker tags the image twice: funnel:$(VERSION) and funnel:latest.
IMAGE   ?= funnel:$(VERSION)

.PHONY: all build test deps run-deps node-deps run bench bench-redis lint fuzz gen docker clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/funnel

# deps installs what the tests need and is missing (redis-server,
# redis-tools, Node.js >= 20 and npm, chromium); run-deps only what make run
# needs (redis-server, redis-tools).
deps:
	@scripts/deps.sh

run-deps:
	@scripts/deps.sh --run

# node-deps installs the exact client versions of compat/node/package-lock.json,
# and bench/bullmq's BullMQ app (the savings page's browser test runs it).
node-deps:
	cd compat/node && npm ci --no-audit --no-fund --loglevel=error
	cd bench/bullmq && npm ci --no-audit --no-fund --loglevel=error

test: deps node-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...

# run starts funnel. Without FUNNEL_UPSTREAM or REDIS_URL it starts a
# throwaway local redis-server and points funnel at it.
run: build run-deps
	@scripts/run.sh $(BIN) $(ARGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./bench/ ./resp/

# bench-redis compares direct Redis, funnel and twemproxy with redis-benchmark.
bench-redis: build run-deps
	bench/redis-benchmark.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzRequestReader -fuzztime 30s ./resp/
	$(GO) test -run '^$$' -fuzz FuzzReplyScanner -fuzztime 30s ./resp/

# gen regenerates the command table from a throwaway local redis-server.
gen: run-deps
	@scripts/gen-commands.sh

# The Dockerfile runs `make build` itself, so the image's binary is built
# exactly as bin/funnel is.
docker:
	docker build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) -t $(IMAGE) -t funnel:latest .

clean:
	rm -rf bin
