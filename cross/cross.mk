# ARM cross builds, qemu tests and Debian packages (issue 7; docs/cross.md).
# Included by the Makefile; the logic lives in cross/*.sh.
CROSS_TARGETS ?= amd64 arm64 armv7
CROSS_TEST_TARGETS ?= $(filter-out amd64,$(CROSS_TARGETS))
CROSS_DIST ?= dist/cross
DEB_DIST ?= dist/deb
export CROSS_DIST := $(abspath $(CROSS_DIST))
export DEB_DIST := $(abspath $(DEB_DIST))

.PHONY: cross cross-test cross-golden deb deb-check

cross: ## mcpd + mcpctl + mcpd-mkmodel for linux amd64, arm64, armv7 (cgo llama.cpp), SHA256SUMS; installs the cross toolchains
	@set -e; for t in $(CROSS_TARGETS); do cross/build.sh $$t; done
	cross/sums.sh $(CROSS_DIST) 'linux-*/mcpd' 'linux-*/mcpctl' 'linux-*/mcpd-mkmodel'

cross-test: $(MODELS)/tiny.gguf ## ARM builds under qemu-user: protocol + engine tests, tokens vs amd64 golden, mcpd on UDP
	@set -e; cross/build.sh amd64; for t in $(CROSS_TEST_TARGETS); do cross/build.sh $$t --tests; cross/test.sh $$t; done

cross-golden: $(MODELS)/tiny.gguf ## rewrite cross/testdata/ask-tiny.golden with the amd64 build
	cross/build.sh amd64
	cross/e2e.sh amd64 --update

deb: cross ## mcpd_<version>_<arch>.deb for amd64, arm64, armhf; lintian; contents checked
	@rm -f $(DEB_DIST)/*.deb $(DEB_DIST)/SHA256SUMS
	@set -e; for t in $(CROSS_TARGETS); do cross/deb.sh $$t; done
	cross/sums.sh $(DEB_DIST) '*.deb'
