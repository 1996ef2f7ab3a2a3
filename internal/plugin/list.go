package plugin

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

type listOptions struct {
	all              bool
	selector, output string
	sortBy           string
}

func listCommand(e *env) *cobra.Command {
	var o listOptions
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"get", "ls"},
		Short:   "List keys with their scopes, state and calls in the last 24 hours",
		Example: `  kubectl keyward list
  kubectl keyward list -A --sort-by calls
  kubectl keyward list -l team=payments -o wide
  kubectl keyward list -o json | jq '.items[].status.usage.last24h'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return e.list(cmd, o) },
	}
	f := c.Flags()
	f.BoolVarP(&o.all, "all-namespaces", "A", false, "keys of every namespace you may list")
	f.StringVarP(&o.selector, "selector", "l", "", "only keys with these labels (team=payments,tier!=free)")
	f.StringVarP(&o.output, "output", "o", "", "wide (limits, quota, Secret, age), json or yaml")
	f.StringVar(&o.sortBy, "sort-by", "name", "name, calls (most first) or last-used (most recent first)")
	_ = c.RegisterFlagCompletionFunc("sort-by", cobra.FixedCompletions([]string{"name", "calls", "last-used"}, cobra.ShellCompDirectiveNoFileComp))
	_ = c.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"wide", "json", "yaml"}, cobra.ShellCompDirectiveNoFileComp))
	return c
}

// keys lists the ApiKeys of the namespace, or of all, matching selector.
func (e *env) keys(cmd *cobra.Command, all bool, selector string) (*kw.ApiKeyList, error) {
	if err := e.connect(); err != nil {
		return nil, err
	}
	var opts []client.ListOption
	if !all {
		opts = append(opts, client.InNamespace(e.ns))
	}
	if selector != "" {
		sel, err := labels.Parse(selector)
		if err != nil {
			return nil, fmt.Errorf("-l %q: %w", selector, err)
		}
		opts = append(opts, client.MatchingLabelsSelector{Selector: sel})
	}
	list := &kw.ApiKeyList{}
	if err := e.c.List(cmd.Context(), list, opts...); err != nil {
		return nil, err
	}
	return list, nil
}

func calls(k *kw.ApiKey) (allowed, denied, limited int64) {
	if u := k.Status.Usage; u != nil {
		return u.Last24h, u.Denied24h, u.Limited24h
	}
	return 0, 0, 0
}

func (e *env) list(cmd *cobra.Command, o listOptions) error {
	switch o.sortBy {
	case "name", "calls", "last-used":
	default:
		return fmt.Errorf("--sort-by %s: use name, calls or last-used", o.sortBy)
	}
	list, err := e.keys(cmd, o.all, o.selector)
	if err != nil {
		return err
	}
	items := list.Items
	sort.SliceStable(items, func(i, j int) bool {
		a, b := &items[i], &items[j]
		switch o.sortBy {
		case "calls":
			ca, _, _ := calls(a)
			cb, _, _ := calls(b)
			if ca != cb {
				return ca > cb
			}
		case "last-used":
			ta, tb := a.Status.LastUsedAt, b.Status.LastUsedAt
			if (ta == nil) != (tb == nil) {
				return ta != nil
			}
			if ta != nil && !ta.Equal(tb) {
				return ta.After(tb.Time)
			}
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
	switch o.output {
	case "json", "yaml":
		list.APIVersion, list.Kind = "v1", "List"
		for i := range list.Items {
			list.Items[i].APIVersion, list.Items[i].Kind = kw.GroupVersion.String(), "ApiKey"
			list.Items[i].ManagedFields = nil
		}
		return printObject(e, list, o.output)
	case "", "wide":
	default:
		return fmt.Errorf("-o %s: use wide, json or yaml", o.output)
	}
	if len(items) == 0 {
		where := "in namespace " + e.ns
		if o.all {
			where = "in any namespace"
		}
		say(e.ErrOut, "No ApiKeys %s.", where)
		return nil
	}
	w := printers.GetNewTabWriter(e.Out)
	cols := []string{"NAME", "KEY ID", "SCOPES", "STATE", "CALLS-24H", "DENIED-24H", "LAST USED", "EXPIRES"}
	if o.all {
		cols = append([]string{"NAMESPACE"}, cols...)
	}
	if o.output == "wide" {
		cols = append(cols, "LIMITS", "QUOTA-USED", "LIMITED-24H", "SECRET", "AGE")
	}
	fmt.Fprintln(w, strings.Join(cols, "\t"))
	now := e.now()
	for i := range items {
		k := &items[i]
		allowed, denied, limited := calls(k)
		row := []string{k.Name, dash(k.Status.KeyID), dash(k.Status.Scopes), dash(string(k.Status.State)),
			strconv.FormatInt(allowed, 10), strconv.FormatInt(denied, 10), lastUsed(now, k.Status.LastUsedAt),
			expiry(now, k.Spec.ExpiresAt)}
		if o.all {
			row = append([]string{k.Namespace}, row...)
		}
		if o.output == "wide" {
			quota := "-"
			if q := k.Status.Quota; q != nil {
				quota = fmt.Sprintf("%d/%d", q.Used, q.RequestsPerDay)
			}
			row = append(row, dash(k.Status.Limits), quota, strconv.FormatInt(limited, 10), dash(k.Status.SecretName),
				short(now.Sub(k.CreationTimestamp.Time)))
		}
		fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func lastUsed(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	return ago(now, t)
}

func expiry(now time.Time, t *metav1.Time) string {
	if t == nil {
		return "never"
	}
	if t.After(now) {
		return "in " + short(t.Sub(now))
	}
	return "expired"
}
