# callscribe — live transcription of emergency calls.
SHELL       := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO          ?= go
# Kept constant so the cgo build cache stays valid (go-nvml warns a lot).
export CGO_ENABLED := 1
export CGO_CFLAGS  := -O2 -g -Wno-deprecated-declarations
# sherpa-onnx's two shared libraries travel with the binary: bin/lib in a
# build tree, PREFIX/lib/callscribe when installed ($$ORIGIN-relative RUNPATH).
# Asked at run time (make expands a whole recipe before running it, and on a
# fresh machine the module is only downloaded by the build).
SHERPA_MOD  := github.com/k2-fsa/sherpa-onnx-go-linux
SHERPA_LIBS := libsherpa-onnx-c-api.so libonnxruntime.so
LDFLAGS     := -X main.version=$(VERSION) -extldflags '-Wl,-rpath,\$$ORIGIN/lib:\$$ORIGIN/../lib/callscribe'
BIN         := bin/callscribe
# Model files (Moonshine weights from npm, checked by hash) for the build tree.
export CALLSCRIBE_MODEL_DIR ?= $(CURDIR)/bin/models
RUN_DATA    ?= $(CURDIR)/.run
RUN_HTTP    ?= 127.0.0.1:8080
RUN_QUIC    ?= 127.0.0.1:4433
TEST_FLAGS  ?= -race -timeout 20m

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

.PHONY: deps deps-test deps-bench
deps: ## install the Debian packages needed to build and run
	@scripts/deps.sh run
deps-test:
	@scripts/deps.sh test
deps-bench:
	@scripts/deps.sh bench

.PHONY: build
build: deps ## build every binary into bin/ and install the model files beside it
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/callscribe
	@d=$$($(GO) mod download -json $(SHERPA_MOD) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p')/lib/x86_64-unknown-linux-gnu; \
	  test -f "$$d/libonnxruntime.so" || { echo "sherpa-onnx libraries not found in $$d" >&2; exit 1; }; \
	  mkdir -p bin/lib && for l in $(SHERPA_LIBS); do cmp -s $$d/$$l bin/lib/$$l || install -m 0644 $$d/$$l bin/lib/$$l; done
	@$(BIN) models install --dest $(CALLSCRIBE_MODEL_DIR) >/dev/null

# The product binary has no simulated GPUs (go-nvml's mock); this one does.
.PHONY: build-dev
build-dev: build ## build bin/callscribe-dev: callscribe plus simulated GPUs (--sim-gpus), for development only
	$(GO) build -trimpath -tags simgpus -ldflags "$(LDFLAGS)" -o bin/callscribe-dev ./cmd/callscribe

.PHONY: run
run: build ## run a whole appliance here and stream the bundled recording through it live
	@scripts/run-demo.sh $(BIN) $(RUN_DATA) $(RUN_HTTP) $(RUN_QUIC) assets/demo-call.wav

.PHONY: test
test: deps-test build ## lint, then run every test with -race (installs what it needs)
	@$(MAKE) --no-print-directory lint
	CALLSCRIBE_REQUIRE_WEBRTC=1 CALLSCRIBE_REQUIRE_MODELS=1 $(GO) test $(TEST_FLAGS) ./...
	@if command -v systemd-analyze >/dev/null; then scripts/check-units.sh; else echo "systemd-analyze not installed: unit checks skipped"; fi
	@$(MAKE) --no-print-directory test-deb

.PHONY: bench
bench: deps-bench build ## run the benchmarks and write BENCHMARKS.md
	$(GO) run ./bench/cmd/benchreport -out BENCHMARKS.md -bin $(BIN)

# The durable ack of a single coordinator and a 3-coordinator cluster
# against the disk's floor (about 11 minutes): only that section of
# BENCHMARKS.md is replaced. Needs ip and tc (iproute2) for the cluster's
# network namespace; CLUSTER_FLAGS passes more (-cluster-delay 2ms …).
CLUSTER_FLAGS ?=
.PHONY: bench-cluster
bench-cluster: ## measure only the single coordinator and a 3-coordinator cluster against the floor, and replace that section of BENCHMARKS.md
	$(GO) run ./bench/cmd/benchreport -cluster-turns-only -out BENCHMARKS.md $(CLUSTER_FLAGS)

.PHONY: chaos
chaos: deps-test build ## kill workers, agents and the coordinator mid-call, cut an agent off, fail a coordinator cluster's leader and followers; write CHAOS.md (needs root)
	CALLSCRIBE_CHAOS_REPORT=$(CURDIR)/CHAOS.md $(GO) test -count=1 -timeout 20m -run '^(TestChaos|TestClusterChaos)$$' -v ./internal/e2e

.PHONY: fuzz
fuzz: deps ## fuzz the frame decoder for 60 s
	$(GO) test ./proto -run '^$$' -fuzz FuzzDecode -fuzztime 60s

.PHONY: lint
# staticcheck is pinned by go.mod's tool directive (go tool: no network once
# the modules are downloaded). The -tags simgpus lines check the development
# build's own file (cmd/callscribe/simgpus.go).
lint: ## gofmt, go vet and staticcheck (make test runs it first)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags simgpus ./cmd/callscribe
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags simgpus ./cmd/callscribe

PREFIX      ?= /usr/local
DESTDIR     ?=
UNITDIR     ?= /lib/systemd/system

.PHONY: install
install: build ## install the binary, units, sysusers and tmpfiles (honours DESTDIR, PREFIX)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/callscribe
	install -d $(DESTDIR)$(PREFIX)/lib/callscribe
	for l in $(SHERPA_LIBS); do install -m 0644 bin/lib/$$l $(DESTDIR)$(PREFIX)/lib/callscribe/$$l; done
	$(BIN) models install --dest $(DESTDIR)$(PREFIX)/share/callscribe/models
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/bin/callscribe|$(PREFIX)/bin/callscribe|' systemd/callscribe-coordinator.service > $(DESTDIR)$(UNITDIR)/callscribe-coordinator.service
	sed 's|/usr/local/bin/callscribe|$(PREFIX)/bin/callscribe|' systemd/callscribe-agent.service > $(DESTDIR)$(UNITDIR)/callscribe-agent.service
	install -D -m 0644 systemd/callscribe.sysusers $(DESTDIR)/usr/lib/sysusers.d/callscribe.conf
	install -D -m 0644 systemd/callscribe.tmpfiles $(DESTDIR)/usr/lib/tmpfiles.d/callscribe.conf
	install -d $(DESTDIR)/etc/callscribe
	for f in coordinator agent; do [ -e $(DESTDIR)/etc/callscribe/$$f.toml ] || install -m 0640 systemd/$$f.toml $(DESTDIR)/etc/callscribe/$$f.toml; done
	[ -e $(DESTDIR)/etc/callscribe/store.key ] || (umask 077 && head -c 32 /dev/urandom >$(DESTDIR)/etc/callscribe/store.key)
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/callscribe/README.md
	install -d $(DESTDIR)$(PREFIX)/share/callscribe
	cp -r firmware-configs $(DESTDIR)$(PREFIX)/share/callscribe/

.PHONY: uninstall
uninstall: ## remove what install put in place
	rm -f $(DESTDIR)$(PREFIX)/bin/callscribe $(DESTDIR)$(UNITDIR)/callscribe-coordinator.service $(DESTDIR)$(UNITDIR)/callscribe-agent.service
	rm -f $(DESTDIR)/usr/lib/sysusers.d/callscribe.conf $(DESTDIR)/usr/lib/tmpfiles.d/callscribe.conf
	rm -rf $(DESTDIR)$(PREFIX)/share/doc/callscribe $(DESTDIR)$(PREFIX)/share/callscribe $(DESTDIR)$(PREFIX)/lib/callscribe

.PHONY: check-units
check-units: build ## systemd-analyze verify and security for the units, installed into a scratch DESTDIR
	@scripts/check-units.sh

# The Debian 12 package: `make deb VERSION=1.2.3` to choose its version
# (default: git describe, mapped by packaging/version.sh).
DEB_VERSION  ?= $(shell packaging/version.sh $(VERSION))
DEB_COMPRESS ?= gzip
DEB_FILE      = bin/callscribe_$(DEB_VERSION)_amd64.deb
# Cached Debian root, apt archives and promtool for test-deb (outside the tree).
TEST_CACHE   ?= $(if $(filter 0,$(shell id -u)),/var/cache/callscribe-test,$(HOME)/.cache/callscribe-test)

.PHONY: deps-deb deb test-deb
deps-deb:
	@scripts/deps.sh deb
deb: deps-deb build ## build bin/callscribe_VERSION_amd64.deb for Debian 12 (VERSION=… to choose)
	@rm -f bin/callscribe_*_amd64.deb
	@packaging/build-deb.sh --version $(DEB_VERSION) --compress $(DEB_COMPRESS) --out bin
test-deb: deb ## lintian, promtool, and install/upgrade/purge the .deb in a debootstrapped Debian 12 (as root; make test runs it)
	@CALLSCRIBE_TEST_CACHE=$(TEST_CACHE) scripts/deps.sh deb-test
	CALLSCRIBE_DEB=$(CURDIR)/$(DEB_FILE) CALLSCRIBE_TEST_CACHE=$(TEST_CACHE) CALLSCRIBE_PROMTOOL=$(TEST_CACHE)/promtool/usr/bin/promtool \
	  $(GO) test -count=1 -timeout 15m -v -run '^Test(Deb|RulesPromtool)' ./packaging

.PHONY: clean
clean: ## remove build output and demo data
	rm -rf bin $(RUN_DATA)
