package plugin

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/printers"

	kw "keyward.dev/keyward/api/v1alpha1"
	"keyward.dev/keyward/internal/policy"
)

// Finding is one thing `audit` found about a key.
type Finding struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Kind is one of the Finding* values.
	Kind   string `json:"finding"`
	Detail string `json:"detail"`
}

// The kinds of finding.
const (
	FindingNeverUsed     = "never-used"
	FindingUnused        = "unused"
	FindingExpiring      = "expiring"
	FindingRestricted    = "restricted-scope"
	FindingSecret        = "secret"
	FindingPreviousValid = "previous-key-valid"
	FindingFailed        = "failed"
)

type auditOptions struct {
	all                bool
	selector, output   string
	unusedFor, expires string
}

func auditCommand(e *env) *cobra.Command {
	var o auditOptions
	c := &cobra.Command{
		Use:   "audit",
		Short: "Find keys to look at: unused, expiring, restricted, broken; exit 1 when any (for CI)",
		Long: `Look through keys for what deserves a look: keys never used or unused for a
while, keys expiring soon, keys holding restricted scopes, keys whose Secret
is missing or in conflict, previous keys still valid after a rotation, and
keys that failed. Archived and expired keys are left out. The exit code is 1
when there are findings, 0 when there are none: a CI job can run it.`,
		Example: `  kubectl keyward audit
  kubectl keyward audit -A --unused-for 7d --expiring-within 30d
  kubectl keyward audit -A -o json | jq '.[] | select(.finding == "unused")'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return e.audit(cmd, o) },
	}
	f := c.Flags()
	f.BoolVarP(&o.all, "all-namespaces", "A", false, "keys of every namespace you may list")
	f.StringVarP(&o.selector, "selector", "l", "", "only keys with these labels")
	f.StringVar(&o.unusedFor, "unused-for", "30d", "a key not used for this long is a finding")
	f.StringVar(&o.expires, "expiring-within", "14d", "a key expiring within this is a finding")
	f.StringVarP(&o.output, "output", "o", "", "json: the findings as a JSON list")
	return c
}

func (e *env) audit(cmd *cobra.Command, o auditOptions) error {
	unused, err := parseDuration(o.unusedFor)
	if err != nil {
		return fmt.Errorf("--unused-for: %w", err)
	}
	soon, err := parseDuration(o.expires)
	if err != nil {
		return fmt.Errorf("--expiring-within: %w", err)
	}
	if o.output != "" && o.output != "json" {
		return fmt.Errorf("-o %s: audit prints a table, or json", o.output)
	}
	list, err := e.keys(cmd, o.all, o.selector)
	if err != nil {
		return err
	}
	var policies kw.ApiKeyPolicyList
	if err := e.c.List(cmd.Context(), &policies); err != nil {
		say(e.ErrOut, "(cannot read ApiKeyPolicies, so restricted scopes are not checked: %v)", err)
	}
	now := e.now()
	findings := []Finding{}
	for i := range list.Items {
		k := &list.Items[i]
		add := func(kind, format string, args ...any) {
			findings = append(findings, Finding{Namespace: k.Namespace, Name: k.Name, Kind: kind, Detail: fmt.Sprintf(format, args...)})
		}
		if k.Spec.Archived || k.Status.State == kw.StateArchived || k.Status.State == kw.StateExpired {
			continue
		}
		age := now.Sub(k.CreationTimestamp.Time)
		switch {
		case k.Status.State == kw.StateFailed:
			add(FindingFailed, "%s: %s", reasonOf(k), readyMessage(k))
		case k.Status.LastUsedAt == nil && age > unused:
			add(FindingNeverUsed, "created %s ago and never used: archive it if nobody needs it", short(age))
		case k.Status.LastUsedAt == nil:
			add(FindingNeverUsed, "created %s ago, not used yet", short(age))
		case now.Sub(k.Status.LastUsedAt.Time) > unused:
			add(FindingUnused, "last used %s", ago(now, k.Status.LastUsedAt))
		}
		if t := k.Spec.ExpiresAt; t != nil && t.After(now) && t.Sub(now) < soon {
			add(FindingExpiring, "expires %s (%s): raise spec.expiresAt or issue a successor", t.UTC().Format(time.RFC3339), until(now, t))
		}
		var restricted []string
		for _, s := range k.Spec.Scopes {
			for _, p := range policies.Items {
				for _, r := range p.Spec.RestrictedScopes {
					if policy.Restricts(string(r), string(s)) && !contains(restricted, string(s)) {
						restricted = append(restricted, string(s))
					}
				}
			}
		}
		if len(restricted) > 0 {
			add(FindingRestricted, "holds %s, restricted by ApiKeyPolicy", strings.Join(restricted, ", "))
		}
		if c := ready(k); c != nil && (c.Reason == kw.ReasonSecretMissing || c.Reason == kw.ReasonSecretConflict) {
			add(FindingSecret, "%s: %s", c.Reason, c.Message)
		}
		for _, p := range k.Status.PreviousKeys {
			if p.RevokesAt.After(now) {
				add(FindingPreviousValid, "previous key %s works until %s (%s)", p.KeyID, p.RevokesAt.UTC().Format(time.RFC3339), until(now, &p.RevokesAt))
			}
		}
	}
	sort.SliceStable(findings, func(i, j int) bool {
		a, b := findings[i], findings[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	if o.output == "json" {
		enc := json.NewEncoder(e.Out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			return err
		}
	} else if len(findings) == 0 {
		say(e.Out, "No findings in %d keys.", len(list.Items))
	} else {
		w := printers.GetNewTabWriter(e.Out)
		fmt.Fprintln(w, "NAMESPACE\tNAME\tFINDING\tDETAIL")
		for _, f := range findings {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", f.Namespace, f.Name, f.Kind, f.Detail)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(findings) > 0 {
		return errFindings
	}
	return nil
}

func readyMessage(k *kw.ApiKey) string {
	if c := ready(k); c != nil {
		return c.Message
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
