# keyward — `make run` brings the whole system up locally, `make test` runs
# every test. Both build what they need into bin/ first.

SHELL := /usr/bin/env bash -o pipefail
export GOTOOLCHAIN := local
# One set of build flags for everything make builds (tests, vet, bin/, the
# image, the release, the control plane, promtool): the reproducible images
# need -trimpath and no cgo, and with the same flags everywhere the Go build
# cache compiles each shared package (client-go, apimachinery, ...) once per
# platform instead of once per flavour. On a fresh machine that is the
# difference between make test in 23 minutes and in under 15.
export GOFLAGS := -mod=mod -trimpath
export CGO_ENABLED := 0

BIN            := $(CURDIR)/bin
CONTROLPLANE   := $(BIN)/controlplane
CONTROLLER_GEN := $(BIN)/controller-gen
KEYWARD        := $(BIN)/keyward
export KUBEBUILDER_ASSETS := $(CONTROLPLANE)

.PHONY: gateways plugin fuzz-long release promtool chart-files image wrk all build run test test-unit test-integration fuzz verify-generated manifests generate controlplane tools bench clean help
all: build

help: ## List the targets.
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

## --- tools -------------------------------------------------------------
$(CONTROLLER_GEN): hack/tools/go.mod hack/tools/go.sum
	@echo ">> building controller-gen (pinned in hack/tools/go.mod)"
	cd hack/tools && go build -o $(CONTROLLER_GEN) sigs.k8s.io/controller-tools/cmd/controller-gen

controlplane: ## Build etcd, kube-apiserver, kube-controller-manager and kubectl (cached by pin).
	@hack/controlplane.sh $(CONTROLPLANE)

# APT_INSTALL installs Debian packages (sudo unless root).
APT_INSTALL = SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq

gateways: ## Install Debian's nginx and Caddy (the end-to-end tests' gateways) in one go, if missing.
	@missing=""; command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="nginx"; \
	command -v caddy >/dev/null || missing="$$missing caddy"; \
	if [ -n "$$missing" ]; then echo ">> installing$$missing from Debian's packages"; $(APT_INSTALL) $$missing >/dev/null; fi

# promtool checks the alerts and the dashboard's queries (test/monitoring).
# Built without Prometheus's service discovery (not needed to check rules,
# and it halves the build), cached outside the clone by pin.
PROMTOOL := $(BIN)/promtool
promtool: $(PROMTOOL) ## Build promtool from the Prometheus Go module (pinned in hack/promtool/go.mod).
$(PROMTOOL): hack/promtool/go.mod hack/promtool/go.sum
	@key=$$(cat hack/promtool/go.mod hack/promtool/go.sum | sha256sum | cut -c1-16); \
	cache="$${KEYWARD_CACHE:-$${XDG_CACHE_HOME:-$$HOME/.cache}/keyward}/promtool-$$key"; \
	if [ ! -x "$$cache/promtool" ]; then \
		echo ">> building promtool (first time only; about 2 minutes on 2 cores)"; mkdir -p "$$cache"; \
		(cd hack/promtool && CGO_ENABLED=0 go build -tags remove_all_sd -trimpath -ldflags "-s -w" \
			-o "$$cache/promtool.tmp" github.com/prometheus/prometheus/cmd/promtool) && \
		mv "$$cache/promtool.tmp" "$$cache/promtool" || exit 1; fi; \
	mkdir -p $(BIN) && cp "$$cache/promtool" $@

tools: $(CONTROLLER_GEN) controlplane gateways promtool

## --- generated code ------------------------------------------------------
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC from markers.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=keyward-controller paths=./controllers/... output:rbac:artifacts:config=config/rbac
	$(CONTROLLER_GEN) rbac:roleName=keyward-authn paths=./internal/index/... output:rbac:artifacts:config=config/rbac/authn

	@$(MAKE) -s chart-files

# The chart renders these files as they are (charts/keyward/templates/static.yaml);
# the copies are generated, and the chart test compares the chart with
# config/default, so neither can drift.
CHART_FILES := charts/keyward/files
chart-files:
	@rm -rf $(CHART_FILES) && mkdir -p $(CHART_FILES)/crds $(CHART_FILES)/rbac $(CHART_FILES)/admission $(CHART_FILES)/monitoring $(CHART_FILES)/argocd
	@cp config/crd/bases/*.yaml $(CHART_FILES)/crds/
	@cp config/rbac/role.yaml config/rbac/roles_for_people.yaml $(CHART_FILES)/rbac/
	@cp config/rbac/authn/role.yaml $(CHART_FILES)/rbac/authn-role.yaml
	@cp config/admission/admission.yaml config/admission/records.yaml config/admission/namespaces.yaml config/admission/size.yaml config/admission-finalizer/finalizer.yaml $(CHART_FILES)/admission/
	@cp config/prometheus/rules.yaml config/grafana/dashboard.json $(CHART_FILES)/monitoring/
	@cp docs/argocd/apikey-health.lua $(CHART_FILES)/argocd/

generate: $(CONTROLLER_GEN) ## Generate deepcopy code from markers.
	$(CONTROLLER_GEN) object paths=./api/...

GENERATED = config/crd/bases/*.yaml config/rbac/role.yaml config/rbac/authn/role.yaml api/v1alpha1/zz_generated.deepcopy.go $(CHART_FILES)/*/*

verify-generated: $(CONTROLLER_GEN) ## Fail when the generated files differ from what the markers generate.
	@before="$$(sha256sum $(GENERATED))"; \
	$(MAKE) -s manifests generate >/dev/null; \
	after="$$(sha256sum $(GENERATED))"; \
	if [ "$$before" != "$$after" ]; then \
		echo "generated files were stale and have been regenerated; review and commit them:"; \
		diff <(echo "$$before") <(echo "$$after"); exit 1; fi

## --- build, run ----------------------------------------------------------
## --- image ---------------------------------------------------------------

IMAGE ?= $(BIN)/keyward-image.tar
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
CREATED ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
LDFLAGS = -s -w -X keyward.dev/keyward/internal/version.Version=$(VERSION) -X keyward.dev/keyward/internal/version.Commit=$(COMMIT)

image: ## Build keyward's OCI image (linux/amd64, linux/arm64) as an OCI layout tarball, without a container engine.
	@for arch in amd64 arm64; do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch go build -trimpath -buildvcs=false -ldflags "$(LDFLAGS)" \
			-o $(BIN)/linux-$$arch/keyward ./cmd/keyward || exit 1; done
	go run ./hack/image --bin amd64=$(BIN)/linux-amd64/keyward,arm64=$(BIN)/linux-arm64/keyward \
		--out $(IMAGE) --version $(VERSION) --revision $(COMMIT) --created $(CREATED)

# make release VERSION=... from the chart's version unless given; the image
# is labelled with it too. Push bin/keyward-image.tar to IMAGE_REPOSITORY
# (crane push) before publishing the manifest and the chart.
RELEASE_VERSION ?= $(shell awk '$$1=="version:"{print $$2}' charts/keyward/Chart.yaml)
IMAGE_REPOSITORY ?= ghcr.io/keyward/keyward
release: VERSION := v$(RELEASE_VERSION)
release: image controlplane ## Write bin/release: the install manifest and the packaged chart, both pinned to the image's digest, and the kubectl plugin's archives with their krew manifest.
	go run ./hack/release --image $(IMAGE) --version $(RELEASE_VERSION) --repository $(IMAGE_REPOSITORY) \
		--kubectl $(CONTROLPLANE)/kubectl --out $(BIN)/release

build: ## Build bin/keyward.
	go build -ldflags "-X keyward.dev/keyward/internal/version.Version=$(VERSION) -X keyward.dev/keyward/internal/version.Commit=$(COMMIT)" -o $(KEYWARD) ./cmd/keyward

plugin: ## Build bin/kubectl-keyward, the kubectl plugin (put it on PATH: kubectl keyward --help).
	go build -ldflags "-X keyward.dev/keyward/internal/version.Version=$(VERSION)" -o $(BIN)/kubectl-keyward ./cmd/kubectl-keyward

run: build controlplane ## Run the whole system locally on the embedded control plane.
	$(KEYWARD) dev --assets $(CONTROLPLANE) --dir $(BIN)/dev --config $(CURDIR)/config

## --- tests ---------------------------------------------------------------
test: verify-generated ## Run every test: generated-file check, unit, fuzz corpus, envtest.
	@# On a fresh machine: the control plane and promtool build side by side
	@# (minutes each; their links and serial steps leave a core free), and
	@# the gateways install from Debian meanwhile.
	@$(MAKE) -s -j3 controlplane promtool gateways
	@# gofmt: an unformatted file once landed on main unnoticed.
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: format the files above (gofmt -w)"; exit 1; }
	go vet ./...
	@# go vet has just run every analyzer, go test's own subset among them.
	@# The two longest packages first: they start while the others run.
	go test -count=1 -timeout 12m -vet=off ./test/e2e ./internal/image ./...

FUZZTIME ?= 30s
fuzz: ## Run every fuzz target of the module for FUZZTIME each (30s; found by name, so a new target is never left out).
	@grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u | while read -r pkg; do \
		for target in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$pkg/*_test.go | cut -d' ' -f2); do \
			echo ">> $$target in $$pkg for $(FUZZTIME)"; \
			go test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; done

fuzz-long: ## Every fuzz target for 10 minutes: for a nightly job, not CI's path.
	@$(MAKE) -s fuzz FUZZTIME=10m

wrk:
	@command -v wrk >/dev/null || { echo ">> installing wrk from Debian's packages"; $(APT_INSTALL) wrk >/dev/null; }

bench: build controlplane wrk ## Run the benchmark suite (docs/benchmarks.md says what it measures).
	go build -o $(BIN)/bench-noop ./test/bench/noop
	go build -o $(BIN)/bench-inproc ./test/bench/inproc
	go test -run '^$$' -bench . -benchmem -count 1 ./internal/...
	go run ./test/bench --bin $(BIN) $(BENCH_ARGS)

clean:
	rm -rf $(BIN)
