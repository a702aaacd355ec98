# mcpd — build, test and run targets. `make help` lists them.
SHELL    := /bin/bash
GO       ?= go
BIN      ?= bin
PKGS     ?= ./...
FUZZTIME ?= 10s
BENCHTIME ?= 1s
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)

.PHONY: all build run test test-short bench fuzz lint fmt vet help clean

all: build

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build every package and the commands into ./bin
	$(GO) build $(PKGS)
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

run: build ## the main job: a simulated device talks MCPFrame to a peer over loopback UDP
	$(BIN)/mcpctl loopback

test: lint ## vet, gofmt and the whole test suite with the race detector
	$(GO) test -race -count=1 $(PKGS)

test-short: ## quick tests without the race detector
	$(GO) test -short -count=1 $(PKGS)

bench: ## run every benchmark (set BENCHTIME, PKGS to narrow)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

fuzz: ## a short fuzz pass over every fuzz target (FUZZTIME each)
	@set -euo pipefail; \
	for pkg in $$($(GO) list $(PKGS)); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== fuzz $$pkg $$target ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done

lint: vet ## gofmt check + go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null; git ls-files --others --exclude-standard '*.go' 2>/dev/null)); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

fmt: ## apply gofmt
	gofmt -w $$(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go')

clean:
	rm -rf $(BIN)
