package app

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/logging"
	"keyward.dev/keyward/internal/testenv"
)

// TestNoKeyInEndpointLogs sends keys every way a client could, good and
// bad, over every interface, to an endpoint logging at the most verbose
// level, and scans its log and client-go's klog output of the same time
// (routed through the redacting logger for the whole run, in TestMain) for
// the keys. The same traffic against an endpoint that does not redact must
// leak: otherwise the scan would prove nothing.
func TestNoKeyInEndpointLogs(t *testing.T) {
	ns := namespace(t, "secret-scan")
	startController(t)
	tokens := issue(t, ns, "a")
	good := tokens["a"]
	id, secret, err := keys.Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := keys.Generate()
	seeds := []string{good, stranger.Token(), good[:30] + "x" + good[31:]}
	needles := []string{secret, stranger.Secret, good[len(keys.Prefix)+keys.KeyIDLen+1:]}

	for _, redact := range []bool{true, false} {
		t.Run(fmt.Sprintf("redaction %v", redact), func(t *testing.T) {
			var out testenv.Buffer
			log := logging.NewUnredacted(&out, logging.MaxVerbosity)
			if redact {
				log = logging.New(&out, logging.MaxVerbosity)
			}
			klogBefore := len(klogOut.String())
			e := startEndpointWith(t, cfg, AuthnOptions{Namespaces: []string{ns}, Logger: log})
			eventually(t, 10*time.Second, "the key to verify", func() bool { return e.check(t, good, "occupancy:read") == 200 })
			for _, tok := range seeds {
				sendEveryWay(t, e.url, e.grpc, tok)
			}
			logged := out.String() + klogOut.String()[klogBefore:]
			if !strings.Contains(logged, id) {
				t.Fatalf("the log never names the key ID: the traffic did not reach the logger\n%.2000s", logged)
			}
			leaks := 0
			for _, n := range needles {
				if i := strings.Index(logged, n); i >= 0 {
					leaks++
					if redact {
						t.Errorf("the log holds a secret: %q", logged[max(0, i-200):min(len(logged), i+80)])
					}
				}
			}
			if !redact && leaks == 0 {
				t.Errorf("without redaction nothing leaked: the scan cannot fail, so it proves nothing")
			}
			t.Logf("redaction %v: %d of %d secrets in %d bytes of log", redact, leaks, len(needles), len(logged))
		})
	}
}

// sendEveryWay presents tok in every place a key can travel, and in
// places it should not, to all three interfaces, as good requests and as
// broken ones.
func sendEveryWay(t *testing.T, base, grpcAddr, tok string) {
	t.Helper()
	id, secret, _ := strings.Cut(strings.TrimPrefix(tok, keys.Prefix), "_")
	basic := base64.StdEncoding.EncodeToString([]byte(id + ":" + secret))
	forward := []map[string]string{
		{"X-Api-Key": tok},
		{"X-Auth-Key": tok, "X-Api-Key": tok},
		{"Authorization": "Bearer " + tok},
		{"Authorization": "Basic " + basic},
		{"X-Original-URI": "/v1/x?_auth_key=" + tok},
		{"X-Original-URI": "/v1/x;_auth_key=" + tok},
		{"X-Original-URI": "/v1/x?token=" + tok + "&_api_auth=" + tok},
		{"X-Original-URI": "/v1/" + tok + "/x"},
		{"X-Forwarded-Uri": "/v1/x?%5Fauth%5Fkey=" + tok},
		{"X-Api-Key": tok, "X-Keyward-Required-Scopes": strings.Repeat("s,", 40)},
	}
	for _, h := range forward {
		for _, path := range []string{"/authn", "/authn/" + tok, "/authn?scope=occupancy:read&_auth_key=" + tok} {
			req, _ := http.NewRequest("GET", base+path, nil)
			for k, v := range h {
				req.Header.Set(k, v)
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}
	body := `{"apiVersion":"keyward.dev/v1alpha1","kind":"AuthReview","request":{"uid":"u","path":"/v1/x;_auth_key=` + tok +
		`","headers":{"x-api-key":"` + tok + `","authorization":"Basic ` + basic + `"},"query":{"_api_auth":"` + tok + `"}}}`
	for _, b := range []string{body, body[:len(body)/2], `{"apiVersion":"` + tok + `"}`} {
		if resp, err := http.Post(base+"/review", "application/json", strings.NewReader(b)); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	// Requests the server cannot read at all.
	host := strings.TrimPrefix(base, "http://")
	for _, raw := range []string{
		"GET /authn?_auth_key=" + tok + " HTTP/1.1\r\nHost: k\r\nX-Big: " + strings.Repeat("a", 40<<10) + "\r\n\r\n",
		"GET " + tok + "\r\n\r\n",
		"GET /authn HTTP/1.1\r\nHost: k\r\nX-Api-Key " + tok + "\r\n\r\n",
		"POST /authn HTTP/1.1\r\nHost: k\r\nX-Api-Key: " + tok + "\r\nContent-Length: 9000\r\n\r\n" + strings.Repeat(tok, 140),
	} {
		c, err := net.Dial("tcp", host)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.WriteString(c, raw)
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, _ = io.Copy(io.Discard, c)
		c.Close()
	}
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	gc := authv3.NewAuthorizationClient(conn)
	for _, h := range []map[string]string{{"x-api-key": tok}, {"authorization": "Basic " + basic}, {"x-api-key": tok + "," + tok}} {
		_, _ = gc.Check(context.Background(), &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/v1/x;_auth_key=" + tok, Query: "_auth_key=" + tok, Headers: h}}}})
	}
}
