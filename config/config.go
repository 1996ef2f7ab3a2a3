// Package config holds keyward's Kubernetes manifests (kustomize bases under
// this folder) and gives the binary the one it needs at run time.
package config

import _ "embed"

// DefaultPolicy is policy/default.yaml: the ApiKeyPolicy the controller
// creates when it does not exist (write access off unless a namespace is
// labelled keyward.dev/write-access: "true").
//
//go:embed policy/default.yaml
var DefaultPolicy []byte
