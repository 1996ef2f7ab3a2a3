package e2e

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// check asks keyward dev's endpoint directly, as a gateway would, and
// returns the status code and reason.
func check(t *testing.T, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://127.0.0.1:8180/authn", nil)
	req.Header.Set("x-api-key", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Keyward-Reason")
}

// TestRotationThroughTheEndpoint rotates a key with kubectl patch and a
// short grace period: the new token works at once, the old one until the
// grace period ends and then gets 401; archiving rejects both.
func TestRotationThroughTheEndpoint(t *testing.T) {
	s := startDev(t, buildKeyward(t))
	waitStates(t, s, "keyward-demo", 30*time.Second)
	const name = "occupancy-reader"
	secret := func() string { return s.secretValue(t, "keyward-demo", name+"-apikey", "token") }
	old := secret()
	// Active in status is the controller's word; the endpoint learns of
	// the record by its own watch a moment later.
	var code int
	var reason string
	start := time.Now()
	deadline := start.Add(30 * time.Second)
	for code, reason = check(t, old); code != 200 && time.Now().Before(deadline); code, reason = check(t, old) {
		time.Sleep(20 * time.Millisecond)
	}
	if code != 200 {
		t.Fatalf("the key does not work before the rotation: %d %s\n%s\n%s", code, reason, s.whereIs(old), goroutines())
	}
	if took := time.Since(start); took > time.Second {
		// Seen under make test's load: invalid_key for over 5 s after the
		// controller said Active. Logged to find out whether it is slow or
		// stuck (see the closing note of 2026-12-03).
		t.Logf("the endpoint verified the issued key only %s after it was Active", took.Round(time.Millisecond))
	}

	s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", name, "--type", "merge",
		"-p", `{"spec":{"rotation":{"generation":1,"gracePeriod":"5s"}}}`)
	rotated := time.Now()
	var fresh string
	eventually(t, 5*time.Second, "the Secret to hold the new key", func() bool {
		fresh = secret()
		return fresh != old
	})
	eventually(t, time.Second, "the new token to work", func() bool { code, _ := check(t, fresh); return code == 200 })
	if code, reason := check(t, old); code != 200 && time.Since(rotated) < 4*time.Second {
		t.Fatalf("the old token stopped working inside its grace period: %d %s", code, reason)
	}
	out := s.mustKubectl(t, "-n", "keyward-demo", "get", "apikey", name, "-o", "jsonpath={.status.previousKeys[0].revokesAt}")
	revokesAt, err := time.Parse(time.RFC3339, out)
	if err != nil {
		t.Fatalf("status.previousKeys[0].revokesAt %q: %v", out, err)
	}
	eventually(t, 10*time.Second, "the old token to be refused", func() bool { code, _ := check(t, old); return code == 401 })
	if late := time.Since(revokesAt); late < 0 || late > 2*time.Second {
		t.Errorf("the old token was refused %s after its revocation time", late)
	}
	if code, _ := check(t, fresh); code != 200 {
		t.Fatalf("the new token stopped working: %d", code)
	}

	s.mustKubectl(t, "-n", "keyward-demo", "patch", "apikey", name, "--type", "merge", "-p", `{"spec":{"archived":true}}`)
	eventually(t, time.Second, "archival to refuse the new token", func() bool {
		code, reason := check(t, fresh)
		return code == 401 && reason == "archived"
	})
	if code, _ := check(t, old); code != 401 {
		t.Fatalf("the old token works after archival: %d", code)
	}
	// And the API server refuses to rotate the archived key.
	if out, err := s.kubectl(t, nil, "-n", "keyward-demo", "patch", "apikey", name, "--type", "merge",
		"-p", `{"spec":{"rotation":{"generation":2}}}`); err == nil {
		t.Fatalf("rotating an archived key was accepted: %s", out)
	}
}

// TestRestrictedScopeWithKubectl: keyward dev installs the default
// ApiKeyPolicy; kubectl apply of a write key in a plain namespace, the
// first thing done once keyward dev is ready, is refused with the API
// server's message, and accepted once the namespace has the
// label the message names.
func TestRestrictedScopeWithKubectl(t *testing.T) {
	s := startDev(t, buildKeyward(t))
	s.mustKubectl(t, "create", "namespace", "team-a")
	robot := strings.NewReader(`apiVersion: keyward.dev/v1alpha1
kind: ApiKey
metadata: {name: robot, namespace: team-a}
spec:
  displayName: Device robot
  scopes: [occupancy:read, devices:write]
`)
	body, _ := io.ReadAll(robot)
	// keyward dev says it is ready only once the API server enforces its
	// admission policies: the first apply is refused, not a later one.
	out, err := s.kubectl(t, bytes.NewReader(body), "apply", "-f", "-")
	if err == nil {
		t.Fatalf("a write key in an unlabelled namespace was accepted right after keyward dev was ready: %s", out)
	}
	const want = "scope devices:write is restricted by ApiKeyPolicy default and namespace team-a may not grant it; " +
		"a cluster administrator can allow it with: kubectl label namespace team-a keyward.dev/write-access=true"
	if !strings.Contains(out, want) {
		t.Fatalf("kubectl said %q; want it to say %q", out, want)
	}
	s.mustKubectl(t, "label", "namespace", "team-a", "keyward.dev/write-access=true")
	eventually(t, 10*time.Second, "kubectl apply to be accepted once the namespace is labelled", func() bool {
		out, err = s.kubectl(t, bytes.NewReader(body), "apply", "-f", "-")
		return err == nil
	})
	t.Logf("refused, then: %s", strings.TrimSpace(out))
	// Accepted means issued: the key becomes Active with its Secret.
	waitKeys(t, s, "team-a", 1, 30*time.Second)
}
