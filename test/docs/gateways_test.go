// Package docs checks that the gateway configurations in docs/gateways.md
// that no test runs (Envoy, Traefik) are at least what those gateways
// accept. nginx's and Caddy's are run by test/e2e.
package docs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/testenv"
)

func block(t *testing.T, heading, lang string) string { return testenv.DocBlock(t, heading, lang) }

// The Envoy bootstrap decodes into Envoy's own types (unknown fields are
// errors), passes their validation rules, and its ext_authz filter fails
// closed.
func TestEnvoyBootstrapIsValid(t *testing.T) {
	js, err := yaml.YAMLToJSON([]byte(block(t, "Envoy", "yaml")))
	if err != nil {
		t.Fatal(err)
	}
	var b bootstrapv3.Bootstrap
	if err := protojson.Unmarshal(js, &b); err != nil {
		t.Fatalf("Envoy would refuse the bootstrap: %v", err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatalf("Envoy would refuse the bootstrap: %v", err)
	}
	var authz []*extauthzv3.ExtAuthz
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				hcm := &hcmv3.HttpConnectionManager{}
				if f.GetTypedConfig().UnmarshalTo(hcm) != nil {
					continue
				}
				for _, hf := range hcm.GetHttpFilters() {
					a := &extauthzv3.ExtAuthz{}
					if hf.GetTypedConfig().UnmarshalTo(a) == nil {
						authz = append(authz, a)
					}
				}
			}
		}
	}

	if len(authz) != 1 {
		t.Fatalf("%d ext_authz filters, want 1", len(authz))
	}
	if a := authz[0]; a.GetFailureModeAllow() || a.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "keyward" {
		t.Errorf("ext_authz must fail closed and call the keyward cluster: %v", a)
	}
}

// forwardAuth and headers are Traefik's middleware options, field for
// field (github.com/traefik/traefik/v3/pkg/config/dynamic): a misspelt
// option is silently ignored by Traefik, so the decode here is strict.
type traefikConfig struct {
	HTTP struct {
		Middlewares map[string]struct {
			ForwardAuth *struct {
				Address                  string   `json:"address"`
				TrustForwardHeader       bool     `json:"trustForwardHeader"`
				AuthResponseHeaders      []string `json:"authResponseHeaders"`
				AuthResponseHeadersRegex string   `json:"authResponseHeadersRegex"`
				AuthRequestHeaders       []string `json:"authRequestHeaders"`
				AddAuthCookiesToResponse []string `json:"addAuthCookiesToResponse"`
				HeaderField              string   `json:"headerField"`
				ForwardBody              bool     `json:"forwardBody"`
				MaxBodySize              *int64   `json:"maxBodySize"`
				PreserveLocationHeader   bool     `json:"preserveLocationHeader"`
				PreserveRequestMethod    bool     `json:"preserveRequestMethod"`
			} `json:"forwardAuth"`
			Headers *struct {
				CustomRequestHeaders  map[string]string `json:"customRequestHeaders"`
				CustomResponseHeaders map[string]string `json:"customResponseHeaders"`
			} `json:"headers"`
		} `json:"middlewares"`
		Routers map[string]struct {
			Rule        string   `json:"rule"`
			Middlewares []string `json:"middlewares"`
			Service     string   `json:"service"`
		} `json:"routers"`
	} `json:"http"`
}

// The Traefik configuration uses only Traefik's option names, sends keyward
// every header it reads a key from, takes back the three identity headers,
// and removes the key before the upstream.
func TestTraefikConfigurationIsComplete(t *testing.T) {
	var c traefikConfig
	if err := yaml.UnmarshalStrict([]byte(block(t, "Traefik", "yaml")), &c); err != nil {
		t.Fatalf("not Traefik's options: %v", err)
	}
	var fa, strip string
	for name, m := range c.HTTP.Middlewares {
		if m.ForwardAuth != nil {
			fa = name
			f := m.ForwardAuth
			for _, h := range append(authn.CredentialHeaders[:], "X-Forwarded-Uri") {
				if !slices.Contains(f.AuthRequestHeaders, h) {
					t.Errorf("forwardAuth does not send %s to keyward", h)
				}
			}
			for _, h := range []string{"X-Keyward-Key-Id", "X-Keyward-Key", "X-Keyward-Scopes"} {
				if !slices.Contains(f.AuthResponseHeaders, h) {
					t.Errorf("forwardAuth does not take %s from keyward's answer", h)
				}
			}
			if f.TrustForwardHeader || !strings.Contains(f.Address, "/authn") {
				t.Errorf("forwardAuth: %+v", f)
			}
		}
		if m.Headers != nil {
			strip = name
			for _, h := range authn.CredentialHeaders {
				if v, ok := m.Headers.CustomRequestHeaders[h]; !ok || v != "" {
					t.Errorf("the headers middleware does not remove %s", h)
				}
			}
		}
	}
	for name, r := range c.HTTP.Routers {
		if i, j := slices.Index(r.Middlewares, fa), slices.Index(r.Middlewares, strip); i < 0 || j < i {
			t.Errorf("router %s: %v should run %s, then %s", name, r.Middlewares, fa, strip)
		}
	}
}

// The TLS transport socket documented for the keyward cluster is valid on
// Envoy's Cluster type.
func TestEnvoyTLSTransportIsValid(t *testing.T) {
	block(t, "Over TLS", "sh") // the section exists
	doc, err := os.ReadFile(filepath.Join(testenv.Root(), "docs", "gateways.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(doc), "\n## Over TLS")
	_, y, ok := strings.Cut(rest, "  ```yaml\n")
	y, _, closed := strings.Cut(y, "  ```")
	if !ok || !closed {
		t.Fatal("no Envoy transport_socket block under Over TLS")
	}
	// The block is indented as a list item; make it a cluster.
	y = "name: keyward\nconnect_timeout: 1s\n" + strings.ReplaceAll(y, "\n  ", "\n")[2:]
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	var c clusterv3.Cluster
	if err := protojson.Unmarshal(js, &c); err != nil {
		t.Fatalf("Envoy would refuse the transport socket: %v", err)
	}
	if err := c.ValidateAll(); err != nil {
		t.Fatalf("Envoy would refuse the transport socket: %v", err)
	}
	tc := &tlsv3.UpstreamTlsContext{}
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil || len(tc.GetCommonTlsContext().GetTlsCertificates()) != 1 {
		t.Fatalf("not an UpstreamTlsContext with a client certificate: %v", err)
	}
}
