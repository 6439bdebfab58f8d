# g8os boot chain. `make help` lists the targets.
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin


VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BINARIES := g8-netup g8-unlock g8-acsession g8-sshd g8-fs g8-ac g8-status
BIN := bin
LDFLAGS := -s -w -X github.com/g8os/boot/internal/version.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -mod=readonly -ldflags '$(LDFLAGS)'

# Debian packages the tests, the demo and the package build need (binutils:
# makepkg strips with strip(1)). Not
# `arping`: it conflicts with iputils-arping and aborts the install.
DEB_PACKAGES := dnsmasq iputils-arping fuse3 encfs gocryptfs systemd-container \
	debootstrap makepkg pacman-package-manager sshpass libarchive-tools \
	squashfs-tools squashfuse openssh-client openssh-server hyperfine curl binutils \
	postgresql

# What `make image`, `make vm-test` and `make vm-demo` need besides DEB_PACKAGES:
# the image builder, the tools that make the disk without mounting it, QEMU
# and its UEFI firmware.
VM_DEB_PACKAGES := mkosi dosfstools mtools fdisk e2fsprogs qemu-system-x86 qemu-utils ovmf

.PHONY: help build test unit lint deps vm-deps demo bench pkg e2e-root catalog fuzz clean image vm-test vm-demo

help:
	@echo "make demo    boot a node against the reference controller in network namespaces (root; KEEP=1 keeps it up, NETPATH=static|dhcp|fallback)"
	@echo "make test    everything CI runs: lint, unit, integration and end-to-end tests (root)"
	@echo "make build   static binaries in $(BIN)/"
	@echo "make bench   benchmarks against their baselines, printed as a table (root)"
	@echo "make pkg     the pacman package (packaging/PKGBUILD, built by makepkg as user builder; root)"
	@echo "make e2e-root  the cached Debian root the end-to-end tests and the demo boot (root, once)"
	@echo "make deps    install the Debian packages the above need"
	@echo "make fuzz    run every fuzz target for FUZZTIME (default 10s)"
	@echo "make image   the bootstrap OS as a bootable UEFI disk, image/out/g8os.raw (mkosi; root; docs/image.md)"
	@echo "make vm-test the VM stage: the image booted under QEMU against the controller (root)"
	@echo "make vm-demo boot the image under QEMU against the reference controller and show its serial console (root)"

build:
	@mkdir -p $(BIN)
	$(GOBUILD) -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

vm-deps: deps
	@missing=$$(for p in $(VM_DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "vm-deps: installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	go vet ./...
	@go run ./tools/catalog | cmp -s - packaging/g8os.catalog || { echo "packaging/g8os.catalog is stale: make catalog"; exit 1; }
	@go mod tidy -diff >/dev/null || { echo "go.mod or go.sum is not tidy: go mod tidy"; exit 1; }
	@# go 1.N.0 and no toolchain line: any Go 1.N toolchain (Arch's go package with GOTOOLCHAIN=local) builds it.
	@grep -qE '^go [0-9]+\.[0-9]+\.0$$' go.mod && ! grep -q '^toolchain' go.mod || { echo "go.mod: want a 'go 1.N.0' line and no toolchain line"; exit 1; }

unit:
	go test -race -count=1 -timeout 15m ./...

test: deps lint e2e-root
	go test -race -count=1 -timeout 18m ./...

catalog:
	go run ./tools/catalog > packaging/g8os.catalog

FUZZTIME ?= 10s
fuzz:
	@for pkg in $$(go list ./...); do \
		for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "fuzz $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# Boots a node against the reference controller in network namespaces and
# prints its boot timeline; KEEP=1 leaves it running until Ctrl-C, NETPATH=
# static|dhcp|fallback picks how the node finds the controller.
demo: deps e2e-root
	go run ./tools/demo $(if $(KEEP),--keep) $(if $(NETPATH),--path $(NETPATH))

# Each bench/*.sh measures one capability beside its baseline in the same run
# and prints markdown table rows: | benchmark | g8 | baseline | ratio | target |
bench: build vm-deps
	@echo "| benchmark | g8 | baseline | ratio | target |"; echo "|---|---|---|---|---|"
	@for b in bench/*.sh; do [ -e "$$b" ] || continue; BIN=$(CURDIR)/$(BIN) bash "$$b" || echo "| $$b | FAILED | | | |"; done

# The pacman package of this checkout (packaging/PKGBUILD), built by makepkg
# as the system user "builder"; prints its path (packaging/out/).
pkg:
	@tools/mkpkg.sh

# The cached Debian root (debootstrap, once) that the end-to-end tests and
# the demo boot under systemd-nspawn; see tools/e2e-root.sh.
e2e-root: deps
	@if [ "$$(id -u)" = 0 ]; then tools/e2e-root.sh >/dev/null; else echo "e2e-root: not root; the end-to-end tests will skip"; fi

# The bootstrap OS image (tools/image.sh): the root tree from image/mkosi.default
# (cached), this checkout's package installed by pacman, a UEFI GPT disk.
# AC_CA= and NET_TOML= put a site's trust anchor and net.toml into it.
image: vm-deps
	@tools/image.sh $(if $(AC_CA),--ac-ca $(AC_CA)) $(if $(NET_TOML),--net-toml $(NET_TOML))

# The VM stage: boots the image under QEMU in network namespaces against the
# real controller (tests/vm); first boot, reboot, power cut, fallback path.
vm-test: vm-deps e2e-root
	G8OS_VM_TESTS=1 go test -count=1 -timeout 40m -v ./tests/vm/

vm-demo: vm-deps e2e-root
	go run ./tools/demo --vm $(if $(KEEP),--keep)

clean:
	rm -rf $(BIN) packaging/pkg packaging/src packaging/out packaging/*.pkg.tar.*
