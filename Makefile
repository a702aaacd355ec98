# mcpd — build, test and run targets. `make help` lists them.
SHELL    := /bin/bash
GO       ?= go
BIN      ?= bin
PKGS     ?= ./...
# An execution count, not a duration: Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" when a -fuzztime duration
# ends while a worker is mid-call (golang/go#75804, fixed in Go 1.27; seen
# in CI on FuzzDetectParsers, no crasher). A count has no such deadline.
# 50,000 inputs take 1–5 s for most targets here, about 100 s for the
# slowest (FuzzStreamAck), on 2 cores.
FUZZTIME ?= 50000x
BENCHTIME ?= 1s
MODELS   ?= testdata/models
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)

# llama.cpp (native/) is C/C++ compiled by cgo, and these flags decide its
# speed: ggml built without -march runs baseline x86-64 (SSE2), 3–14× slower.
# x86-64-v3 = AVX2, FMA, F16C, BMI2 (Haswell and later); native.CheckCPU
# refuses older CPUs at start. Never -march=native: a build machine may
# advertise instructions (AMX) the machines it runs on cannot execute.
# Go's build cache keys on these flags: keep them stable or llama.cpp
# rebuilds from scratch (~2–3 min). Override with NATIVE_CFLAGS=...
ifeq ($(shell $(GO) env GOARCH),amd64)
NATIVE_CFLAGS ?= -O3 -march=x86-64-v3
else
NATIVE_CFLAGS ?= -O3
endif
export CGO_ENABLED := 1
export CGO_CFLAGS := $(NATIVE_CFLAGS)
export CGO_CXXFLAGS := $(NATIVE_CFLAGS)
export GO

.PHONY: all build run test test-systemd test-nocgo test-short bench bench-native fuzz lint lint-units fmt vet help clean native-headers models ctest cfuzz footprint soak bench-report

all: build

help: ## list targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# One set of build flags for every package and the commands: Go's cache
# keys on -trimpath, so mixing builds with and without it compiled
# llama.cpp twice on a cold cache (~3.5 min each on 2 cores).
# cross/build.sh's amd64 build uses the same flags and reuses the cache.
build: native-headers ## build every package and the commands into ./bin
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	$(GO) build -trimpath $(PKGS)

run: build $(MODELS)/tiny.gguf ## the main job: mcpd (llama.cpp, generated model) answers a device over UDP and over a pty UART
	$(BIN)/mcpctl demo --mcpd $(BIN)/mcpd --model $(MODELS)/tiny.gguf

# Test binaries are compiled in parallel (llama.cpp's cold build needs both
# cores), then run one package at a time (-p 1): ggml's worker threads spin
# at barriers, so two packages running multi-threaded llama.cpp on 2 cores
# at once slow each other down ~200× (measured: 0.15 s → 28 s per test).
# A failed compile is rerun to show its errors.
TESTRUN = $(GO) test $(1) -count=1 -run '^$$' $(PKGS) >/dev/null || $(GO) test $(1) -count=1 -run '^$$' $(PKGS); \
	$(GO) test $(1) -count=1 -p 1 $(PKGS)

test: native-headers lint lint-units ctest test-nocgo ## vet, gofmt, unit-file lint, the C library's tests, the cgo-free packages without cgo, and the whole test suite with the race detector
	@set -e; $(call TESTRUN,-race)

# Only backends/llamacpp and native may need cgo (and the commands that
# link them): everything the daemon is made of builds and passes without.
NOCGO_PKGS ?= ./serialproto/... ./daemon/... ./backends/ ./backends/detect/ ./backends/grammar/ ./backends/kvstate/ ./backends/ollama/ ./native/gguf/ ./clients/device/...
test-nocgo: ## build and test the packages that must not need cgo with CGO_ENABLED=0
	CGO_ENABLED=0 $(GO) test -count=1 $(NOCGO_PKGS)
	@# armv7 boards are 32-bit: vet (tests included) catches constants that overflow int there
	GOARCH=arm CGO_ENABLED=0 $(GO) vet $(NOCGO_PKGS)

test-short: native-headers ## quick tests without the race detector
	@set -e; $(call TESTRUN,-short)

bench: native-headers ## run every benchmark (set BENCHTIME, PKGS to narrow)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $(PKGS)

fuzz: native-headers ## a short fuzz pass over every fuzz target (FUZZTIME each)
	@set -euo pipefail; \
	for pkg in $$($(GO) list $(PKGS)); do \
	  for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== fuzz $$pkg $$target ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
	  done; \
	done
	$(MAKE) -s cfuzz

# The device-side C library (clients/c): vectors, unit tests under ASan and
# UBSan, examples; its decoder's differential fuzz; its Cortex-M footprint.
ctest: ## the C library's host tests (gcc, -Werror, sanitizers)
	$(MAKE) -s -C clients/c test

cfuzz: ## the C stream decoder against a transcription of the resync rule, and random input to every C parser
	$(MAKE) -s -C clients/c fuzz FUZZ_ITER=10000

footprint: ## Cortex-M0+/M4 flash and RAM of the C library (installs gcc-arm-none-eabi)
	$(MAKE) -s -C clients/c footprint

lint: vet ## gofmt check + go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null; git ls-files --others --exclude-standard '*.go' 2>/dev/null)); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

lint-units: ## systemd-analyze verify + exposure threshold on systemd/*.service, *.socket
	@systemd/verify-units.sh

vet: native-headers
	$(GO) vet $(PKGS)

fmt: ## apply gofmt
	gofmt -w $$(git ls-files '*.go'; git ls-files --others --exclude-standard '*.go')

# The llama.cpp/ggml headers from the pinned module, copied (not committed)
# into native/include; rewritten only when they differ.
native-headers: ## copy the llama.cpp headers native/ compiles against
	@sh native/copy-headers.sh

$(MODELS)/tiny.gguf: ## the tiny generated model (seed 1) that make run serves
	@mkdir -p $(MODELS)
	$(GO) run ./cmd/mcpd-mkmodel -shape tiny -o $@

models: ## write the generated models (tiny, 135M Q8_0) into $(MODELS)
	@mkdir -p $(MODELS)
	$(GO) run ./cmd/mcpd-mkmodel -shape tiny -o $(MODELS)/tiny.gguf
	$(GO) run ./cmd/mcpd-mkmodel -shape 135m -o $(MODELS)/bench-135m-q8_0.gguf

# bench-native: first the references of the same run — the machine's
# memory bandwidth, llama.cpp settings against each other, the engine
# against the C harness (native/harness), each alternating with its
# baseline every few tens of milliseconds (BENCH_ROUNDS rounds) — then
# the engine's own figures. About 3 minutes; on a shared machine run it
# under the heavy lock.
BENCH_ROUNDS ?= 16
BENCH_NATIVE_ENV = MCPD_BENCH_MODEL=$(abspath $(MODELS)/bench-135m-q8_0.gguf) MCPD_BENCH_THREADS=2
bench-native: native-headers models ## llama.cpp on the 135M Q8_0 model, 2 threads: engine ÷ C harness, bytes/s ÷ memory bandwidth, then speed figures
	$(BENCH_NATIVE_ENV) $(GO) test -run '^$$' -bench '^Benchmark(Memory|Settings)$$' -benchtime $(BENCH_ROUNDS)x -count 1 ./native/harness/
	$(BENCH_NATIVE_ENV) $(GO) test -run '^$$' -bench '^Benchmark(NativeVsHarness|TTFTVsHarness|StepTokens)$$' -benchtime $(BENCH_ROUNDS)x -count 1 ./backends/llamacpp/
	$(BENCH_NATIVE_ENV) $(GO) test -run '^$$' -bench '^Benchmark(Native(Generate|Prompt|Parallel)|SchemaDecode)$$' -benchtime $(BENCHTIME) -count 1 ./backends/llamacpp/

# The fault scenarios of docs/reliability.md, each for SOAK_DURATION (about
# 35 rows, the hostile set's and the C devices' included: about 12 minutes
# at 15s on a shared 2-core box); the table goes
# to $(SOAK_OUT). `make test` runs the same scenarios for 2 s each. Runs
# llama.cpp: on a shared machine wrap it in the heavy lock.
SOAK_DURATION ?= 15s
SOAK_OUT ?= $(BIN)/soak.md
# SOAK_SET=hostile runs only the hostile-peer scenarios (issue 22, TestHostileSet).
SOAK_SET ?=
SOAK_RUN := $(if $(filter hostile,$(SOAK_SET)),-run TestHostileSet,)
soak: native-headers ## fault scenarios (lossy UDP, late replays, noisy UART, dying engines, replug, 1,000-source flood) for SOAK_DURATION each; table in SOAK_OUT
	@mkdir -p $(dir $(SOAK_OUT))
	MCPD_SOAK_DURATION=$(SOAK_DURATION) MCPD_SOAK_OUT=$(abspath $(SOAK_OUT)) \
	  $(GO) test -count=1 -timeout 30m $(SOAK_RUN) ./internal/soak/
	@echo "table written to $(SOAK_OUT)"

bench-report: build models ## Go benchmarks + mcpctl bench scenarios → bench/reports/YYYY-MM-DD.md (~11 min; on a shared machine: flock /work/heavy.lock make bench-report)
	GO=$(GO) BIN=$(BIN) MODEL=$(MODELS)/bench-135m-q8_0.gguf bench/report.sh

# PID-1 tests (systemd/pid1, docs/systemd.md): the amd64 .deb, built into
# $(PID1_DIR) so dist/ is left alone, installed with dpkg -i in a Debian 12
# container booted by systemd-nspawn with systemd as PID 1. Needs root,
# systemd-container and debootstrap; the rootfs is cached in $(PID1_DIR).
PID1_DIR ?= $(BIN)/systemd-test
test-systemd: ## mcpd's .deb under real systemd (PID 1 in systemd-nspawn): install, first start without a model, reload, socket activation, watchdog, drain, journald, hardening, upgrade
	$(MAKE) deb CROSS_TARGETS=amd64 CROSS_DIST=$(abspath $(PID1_DIR))/cross DEB_DIST=$(abspath $(PID1_DIR))/deb
	PID1_DIR=$(PID1_DIR) systemd/pid1/run.sh $(PID1_DIR)/deb/mcpd_*_amd64.deb

clean:
	rm -rf $(BIN) native/include $(MODELS) clients/c/build dist

include cross/cross.mk
