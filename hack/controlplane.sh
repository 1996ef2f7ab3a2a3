#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl) from the Go modules pinned in hack/etcd and hack/controlplane, and
# installs them into $1 (default bin/controlplane).
#
# The binaries are cached outside the clone, in a folder keyed by a hash of the
# pins, so a fresh clone on the same machine (CI) reuses them and a change of
# pin builds anew. Nothing is downloaded but Go modules.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="${1:-$here/../bin/controlplane}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

k8s_version="$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/controlplane/go.mod")"
key="$(cat "$here/controlplane.sh" "$here/controlplane/go.mod" "$here/controlplane/go.sum" \
	"$here/etcd/go.mod" "$here/etcd/go.sum" "$here/etcd/main.go" | sha256sum | cut -c1-16)"
cache="${KEYWARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keyward}/controlplane-$k8s_version-$key"
bins=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() {
	local d="$1" b
	for b in "${bins[@]}"; do [[ -x "$d/$b" ]] || return 1; done
}

if ! have_all "$cache"; then
	echo ">> building the local control plane $k8s_version (first time only; several minutes on 2 cores)"
	tmp="$cache.tmp.$$"
	mkdir -p "$tmp"
	trap 'rm -rf "$tmp"' EXIT
	minor="${k8s_version#v1.}"; minor="${minor%%.*}"
	ldflags="-s -w"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
		ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	done
	# etcd (a module of its own) beside the three Kubernetes commands, which
	# one go build compiles together: their shared packages once, and each
	# link beside the others' compiling rather than after it.
	echo ">>   etcd, kube-apiserver, kube-controller-manager, kubectl"
	(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .) &
	etcd=$!
	(cd "$here/controlplane" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl) ||
		{ kill "$etcd" 2>/dev/null; exit 1; }
	wait "$etcd"
	rm -rf "$cache"
	mv "$tmp" "$cache"
	trap - EXIT
fi

mkdir -p "$dest"
for b in "${bins[@]}"; do
	if ! cmp -s "$cache/$b" "$dest/$b"; then
		cp "$cache/$b" "$dest/$b.new" && mv "$dest/$b.new" "$dest/$b"
	fi
done
echo ">> local control plane $k8s_version ready in $dest"
