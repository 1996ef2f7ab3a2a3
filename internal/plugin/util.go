package plugin

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// parseDuration reads Go durations and days: 90d, 36h, 1d12h.
func parseDuration(s string) (time.Duration, error) {
	var total time.Duration
	rest := s
	if i := strings.IndexByte(rest, 'd'); i > 0 {
		days, err := strconv.Atoi(rest[:i])
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration: use 90d, 36h or 1d12h", s)
		}
		total, rest = time.Duration(days)*24*time.Hour, rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration: use 90d, 36h or 1d12h", s)
		}
		total += d
	}
	if total <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration", s)
	}
	return total, nil
}

// ago says how long ago t was, as kubectl does (5s, 3m, 2h, 4d); "never"
// for no time.
func ago(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	return short(now.Sub(t.Time)) + " ago"
}

// short is a duration in kubectl's short form.
func short(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// until says when t comes, relative to now: "in 89d", "passed 2d ago",
// "never".
func until(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	if d := t.Sub(now); d > 0 {
		return "in " + short(d)
	}
	return "passed " + short(now.Sub(t.Time)) + " ago"
}

func ready(k *kw.ApiKey) *metav1.Condition {
	for i := range k.Status.Conditions {
		if c := &k.Status.Conditions[i]; c.Type == kw.ConditionReady {
			return c
		}
	}
	return nil
}

// current reports whether the status describes the spec as it is.
func current(k *kw.ApiKey) bool {
	c := ready(k)
	return c != nil && c.ObservedGeneration == k.Generation && k.Status.ObservedGeneration == k.Generation
}

// settled is where waiting for a key ends: it is issued (or archived,
// expired: what its spec asks), or it failed and someone must act.
func settled(k *kw.ApiKey) (done bool, err error) {
	if !current(k) {
		return false, nil
	}
	c := ready(k)
	switch k.Status.State {
	case kw.StateFailed:
		return true, fmt.Errorf("keyward cannot issue the key (%s): %s", c.Reason, c.Message)
	case kw.StatePending:
		return false, nil
	}
	return c.Status == metav1.ConditionTrue || k.Status.State == kw.StateActive, nil
}

// waitFor polls the ApiKey until cond says done, writing each new state to
// ErrOut, for at most timeout.
func (e *env) waitFor(ctx context.Context, name string, timeout time.Duration, cond func(*kw.ApiKey) (bool, error)) (*kw.ApiKey, error) {
	k := &kw.ApiKey{}
	shown := ""
	var condErr error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		if err := e.c.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: name}, k); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		state := string(k.Status.State)
		if state == "" {
			state = "waiting for keyward"
		}
		if c := ready(k); c != nil && c.Reason != "" {
			state += " (" + c.Reason + ")"
		}
		if state != shown {
			say(e.ErrOut, "  … %s", state)
			shown = state
		}
		done, err := cond(k)
		condErr = err
		return done, nil
	})
	if condErr != nil {
		return k, condErr
	}
	if err != nil {
		msg := "no Ready condition yet: is the keyward controller running?"
		if c := ready(k); c != nil {
			msg = c.Reason + ": " + c.Message
		}
		return k, fmt.Errorf("gave up waiting after %s; the ApiKey says %s", timeout, msg)
	}
	return k, nil
}

// secretOf reads the Secret that holds an ApiKey's key. A user without
// get on Secrets gets a message that says so, and what to do instead.
func (e *env) secretOf(ctx context.Context, k *kw.ApiKey) (*corev1.Secret, error) {
	name := k.Status.SecretName
	if name == "" {
		name = k.EffectiveSecretName()
	}
	sec := &corev1.Secret{}
	err := e.c.Get(ctx, client.ObjectKey{Namespace: k.Namespace, Name: name}, sec)
	switch {
	case apierrors.IsForbidden(err):
		return nil, fmt.Errorf("you may not read Secret %s in namespace %s, which holds the key: ask for get on secrets "+
			"there, or mount the Secret into the workload that uses the key", name, k.Namespace)
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("Secret %s in namespace %s, which held the key, is gone (the ApiKey says %s); "+
			"the key still works for clients that have it", name, k.Namespace, reasonOf(k))
	case err != nil:
		return nil, err
	}
	return sec, nil
}

func reasonOf(k *kw.ApiKey) string {
	if c := ready(k); c != nil {
		return c.Reason
	}
	return "nothing yet"
}

// fixedNow is the clock: KEYWARD_NOW (RFC 3339) pins it, for outputs that
// show ages to be compared in tests.
func fixedNow() func() time.Time {
	if v := os.Getenv("KEYWARD_NOW"); v != "" {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return func() time.Time { return t }
		}
	}
	return time.Now
}
