# nodelet: `make run` runs the agent on this machine, `make test` runs every test.
# Both install what they need (Debian packages, and Rust through rustup if cargo is missing).
# Run as root: nodelet creates namespaces, mounts and cgroups.

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
CONFIG_DIR ?= /etc/nodelet
MANIFESTS ?= $(CONFIG_DIR)/manifests
export PATH := $(HOME)/.cargo/bin:$(PATH)
# The shim that release builds ship: static, with musl (a thousand shims share its pages; see
# [profile.shim] in Cargo.toml). Without rustup to add the target, the glibc shim is kept.
SHIM_TARGET ?= x86_64-unknown-linux-musl

# busybox-static: the test and demo images; util-linux: unshare/nsenter for test nodes;
# iproute2, nftables, containernetworking-plugins: the pod network and its reference plugins;
# docker-registry, skopeo: a real registry for the image tests; libssl-dev, pkg-config: TLS;
# chromium, chromium-driver: the dashboard's browser tests.
DEBS := busybox-static util-linux iproute2 nftables containernetworking-plugins docker-registry skopeo \
        libssl-dev libseccomp-dev pkg-config ca-certificates curl gcc apache2-utils umoci openssl \
        chromium chromium-driver

.PHONY: all deps build release images dashboard deb vm-test run test faults bench scale fuzz install uninstall fmt lint clean

all: build

deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@dpkg -s kubectl >/dev/null 2>&1 || { \
	  echo "installing kubectl (the Google Cloud SDK package: kubectl and kubectl.1.27 ... 1.33)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gpg && \
	  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | gpg --dearmor --yes -o /usr/share/keyrings/cloud.google.gpg && \
	  echo "deb [signed-by=/usr/share/keyrings/cloud.google.gpg] https://packages.cloud.google.com/apt cloud-sdk main" \
	    > /etc/apt/sources.list.d/google-cloud-sdk.list && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl; }
	@command -v $(CARGO) >/dev/null || { \
	  echo "cargo not found: installing Rust with rustup"; \
	  curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal; }
	@if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx $(SHIM_TARGET); then \
	  rustup target add $(SHIM_TARGET) || echo "no $(SHIM_TARGET) target: release builds keep the glibc shim"; fi

build: deps dashboard
	$(CARGO) build -p nodelet -p nodelet-sandbox --bins

release: deps dashboard
	$(CARGO) build --release -p nodelet -p nodelet-sandbox --bins
	$(static-shim)

# The dashboard's terminal (xterm.js) from npm, where a build's agent looks for it; the page
# itself is compiled into the agent.
dashboard: target/dashboard/xterm.js

target/dashboard/xterm.js: dashboard/package.json dashboard/package-lock.json dashboard/install.sh
	bash dashboard/install.sh target/dashboard

# Builds the static shim and puts it where cargo put the glibc one, as a file of its own (cargo's
# is a hard link into target/release/deps). Cargo leaves it there until it relinks the sandbox
# crate; every target that ships or measures the shim runs this.
define static-shim
	@if rustup target list --installed 2>/dev/null | grep -qx $(SHIM_TARGET); then \
	  $(CARGO) build --profile shim --target $(SHIM_TARGET) -p nodelet-sandbox --bin nodelet-shim && \
	  rm -f target/release/nodelet-shim && \
	  install -m 0755 target/$(SHIM_TARGET)/shim/nodelet-shim target/release/nodelet-shim && \
	  echo "target/release/nodelet-shim: static ($(SHIM_TARGET))"; fi
endef

images: deps
	bash tests/images/build.sh target/test-images

# Runs the agent in the foreground with the demo images and a manifest directory
# ($(MANIFESTS); the kubia demo pod is put there if it is empty). Pods keep running after ^C.
run: release images
	install -d $(MANIFESTS)
	target/release/nodelet image import target/test-images/busybox
	target/release/nodelet image import target/test-images/kubia
	@if [ -z "$$(ls -A $(MANIFESTS))" ]; then cp docs/examples/kubia.yaml $(MANIFESTS)/; \
	  echo "nodelet: the demo pod is $(MANIFESTS)/kubia.yaml (remove the file to delete the pod)"; fi
	@echo "nodelet: static pods from $(MANIFESTS) and the built-in API on https://127.0.0.1:6443;"
	@echo "  try 'target/release/nodelet kubectl get pods -o wide' in another shell;"
	@echo "  ^C stops nodelet and leaves its pods running; 'target/release/nodelet reset' removes them"
	exec target/release/nodelet --pod-manifest-path $(MANIFESTS)

test: build
	$(CARGO) test --workspace

# The fault suite's long version: the restart tests with 100 pods.
faults: build
	FAULT_PODS=100 $(CARGO) test -p nodelet-tests --test faults

bench: deps dashboard
	$(CARGO) build --release -p nodelet -p nodelet-sandbox -p nodelet-tests --bins
	$(static-shim)
	NODELET_BIN=$(CURDIR)/target/release/nodelet target/release/bench

# The density scenario with 1,000 pods (SCALE_PODS to change it), timed; minutes.
scale: deps
	$(CARGO) build --release -p nodelet -p nodelet-sandbox -p nodelet-tests --bins
	$(static-shim)
	NODELET_BIN=$(CURDIR)/target/release/nodelet BENCH=scale target/release/bench

# Every fuzz target for FUZZ_SECONDS each (cargo-fuzz on stable, no sanitizer); see CONTRIBUTING.md.
FUZZ_SECONDS ?= 60
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash tests/fuzz/run.sh

# The Debian package: binaries, unit, default config, the dashboard's terminal, docs; see
# agent/dist/deb/build.sh and the operator guide.
deb: release
	bash agent/dist/deb/build.sh target/release target/deb

# QEMU guests (TCG, cgroup v2 only) that install the .deb and run nodelet under systemd, each
# scenario checked inside the guest; see vm-test/README.md. Minutes; not part of `make test`.
VM_DEBS := qemu-system-x86 qemu-utils debootstrap
vm-test: deb images
	@missing=$$(for p in $(VM_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; fi
	bash vm-test/run.sh "$$(ls -t target/deb/nodelet_*.deb | head -1)"

install: release
	install -D -m 0755 target/release/nodelet $(DESTDIR)$(PREFIX)/bin/nodelet
	install -D -m 0755 target/release/nodelet-shim $(DESTDIR)$(PREFIX)/bin/nodelet-shim
	install -D -m 0644 agent/dist/nodelet.service $(DESTDIR)/etc/systemd/system/nodelet.service
	install -d $(DESTDIR)$(PREFIX)/share/nodelet/dashboard
	install -m 0644 target/dashboard/* $(DESTDIR)$(PREFIX)/share/nodelet/dashboard/
	install -d $(DESTDIR)$(MANIFESTS)
	@[ -e $(DESTDIR)$(CONFIG_DIR)/config.yaml ] || install -m 0644 agent/dist/config.yaml $(DESTDIR)$(CONFIG_DIR)/config.yaml

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/nodelet $(DESTDIR)$(PREFIX)/bin/nodelet-shim $(DESTDIR)/etc/systemd/system/nodelet.service
	rm -rf $(DESTDIR)$(PREFIX)/share/nodelet/dashboard

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
