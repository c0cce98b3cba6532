# mxbox — see README.md. Every target installs what it needs (Go modules via
# the module proxy; Debian packages via .ci/deps.sh when run as root).
SHELL   := /bin/bash
# pipefail: `bench | tee` must still fail when the benchmark does.
.SHELLFLAGS := -eo pipefail -c
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PKG     := ./firmware/cmd/mxbox
BIN     := bin/mxbox

.PHONY: all build run test test-short lint cross bench deps clean

all: build

deps:
	@.ci/deps.sh

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) $(PKG)

# Start mxbox on the embedded defaults: SMTP 127.0.0.1:2525, submission
# 127.0.0.1:2587, DNS 127.0.0.1:5353, spool in ./var/mxbox.
run: build
	./$(BIN) serve

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The whole suite: lint, race-enabled tests (real SMTP/DNS on loopback, real
# Badger, the real binary for crash tests), cross builds.
test: deps lint cross
	$(GO) test -race -count=1 -timeout 40m ./...

test-short:
	$(GO) test -count=1 -short ./...

cross:
	CGO_ENABLED=0 GOOS=linux GOARCH=arm GOARM=7 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/mxbox-linux-armv7 $(PKG)
	CGO_ENABLED=0 GOOS=linux GOARCH=arm64 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/mxbox-linux-arm64 $(PKG)

# Benchmarks against the real peers (Postfix, Unbound, dnsmasq); results go
# to bench-results/. Not part of `make test`: this machine is shared and noisy.
bench: deps build
	@mkdir -p bench-results
	$(GO) test -run '^$$' -bench . -benchtime 1x ./storage/ | tee bench-results/storage.txt
	bash test/bench/smtp/run.sh | tee bench-results/smtp.txt
	bash test/bench/dns/run.sh | tee bench-results/dns.txt

clean:
	rm -rf bin dist var bench-results
