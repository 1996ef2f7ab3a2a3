package plugin

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/cli-runtime/pkg/printers"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func describeCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "describe NAME",
		Short: "Everything about one key: state, usage by hour, previous keys, conditions, Events",
		Example: `  kubectl keyward describe partner-feed
  kubectl keyward describe robot -n team-a`,
		Args:              exactName,
		ValidArgsFunction: completeKeys(e),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := e.getKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			var events eventsv1.EventList
			evErr := e.c.List(cmd.Context(), &events, client.InNamespace(k.Namespace),
				client.MatchingFieldsSelector{Selector: fields.SelectorFromSet(fields.Set{"regarding.name": k.Name, "regarding.kind": "ApiKey"})})
			return e.describe(k, events.Items, evErr)
		},
	}
}

func (e *env) describe(k *kw.ApiKey, events []eventsv1.Event, evErr error) error {
	now := e.now()
	w := printers.GetNewTabWriter(e.Out)
	field := func(name, value string) { fmt.Fprintf(w, "%s:\t%s\n", name, value) }
	field("Name", k.Name)
	field("Namespace", k.Namespace)
	if k.Spec.DisplayName != "" {
		field("Display name", k.Spec.DisplayName)
	}
	if k.Spec.Description != "" {
		field("Description", k.Spec.Description)
	}
	field("State", dash(string(k.Status.State)))
	field("Key ID", dash(k.Status.KeyID))
	field("Scopes", dash(k.Status.Scopes))
	field("Secret", dash(k.Status.SecretName))
	field("Endpoint", dash(k.Status.Endpoint))
	if k.Status.IssuedAt != nil {
		field("Issued", k.Status.IssuedAt.UTC().Format(time.RFC3339)+" ("+ago(now, k.Status.IssuedAt)+")")
	}
	if k.Spec.ExpiresAt != nil {
		field("Expires", k.Spec.ExpiresAt.UTC().Format(time.RFC3339)+" ("+until(now, k.Spec.ExpiresAt)+")")
	} else {
		field("Expires", "never")
	}
	if k.Status.ArchivedAt != nil {
		field("Archived", k.Status.ArchivedAt.UTC().Format(time.RFC3339))
	}
	if r := k.Spec.Rotation; r != nil {
		s := fmt.Sprintf("generation %d, grace period %s", r.Generation, k.GracePeriod())
		if r.Every != nil {
			s += ", every " + r.Every.Duration.String()
		}
		field("Rotation", s)
	}
	if k.Status.Limits != "" {
		field("Limits", k.Status.Limits)
	}
	if q := k.Status.Quota; q != nil {
		s := fmt.Sprintf("%d of %d used", q.Used, q.RequestsPerDay)
		if q.ExhaustedUntil != nil {
			s += ", exhausted until " + q.ExhaustedUntil.UTC().Format(time.RFC3339)
		}
		field("Quota", s)
	}
	allowed, denied, limited := calls(k)
	s := fmt.Sprintf("%d allowed, %d denied", allowed, denied)
	if limited > 0 {
		s += fmt.Sprintf(" (%d over its limits)", limited)
	}
	field("Calls, last 24 hours", s)
	field("Last used", lastUsed(now, k.Status.LastUsedAt))
	if err := w.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(e.Out, "\nCalls per hour (UTC), last 24 hours:")
	chart(e.Out, k.Status.Usage, now)

	if len(k.Status.PreviousKeys) > 0 {
		fmt.Fprintln(e.Out, "\nPrevious keys (still working until the end of their grace period):")
		w = printers.GetNewTabWriter(e.Out)
		fmt.Fprintln(w, "  KEY ID\tWORKS UNTIL")
		for _, p := range k.Status.PreviousKeys {
			fmt.Fprintf(w, "  %s\t%s (%s)\n", p.KeyID, p.RevokesAt.UTC().Format(time.RFC3339), until(now, &p.RevokesAt))
		}
		_ = w.Flush()
	}

	fmt.Fprintln(e.Out, "\nConditions:")
	w = printers.GetNewTabWriter(e.Out)
	fmt.Fprintln(w, "  TYPE\tSTATUS\tREASON\tSINCE\tMESSAGE")
	for _, c := range k.Status.Conditions {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, short(now.Sub(c.LastTransitionTime.Time)), c.Message)
	}
	_ = w.Flush()

	fmt.Fprintln(e.Out, "\nEvents:")
	switch {
	case evErr != nil:
		fmt.Fprintf(e.Out, "  (cannot list Events: %v)\n", evErr)
	case len(events) == 0:
		fmt.Fprintln(e.Out, "  <none>")
	default:
		sort.Slice(events, func(i, j int) bool { return eventTime(&events[i]).Before(eventTime(&events[j])) })
		if len(events) > 10 {
			events = events[len(events)-10:]
		}
		w = printers.GetNewTabWriter(e.Out)
		fmt.Fprintln(w, "  TYPE\tREASON\tAGE\tMESSAGE")
		for i := range events {
			ev := &events[i]
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", ev.Type, ev.Reason, short(now.Sub(eventTime(ev))), ev.Note)
		}
		_ = w.Flush()
	}
	return nil
}

func eventTime(ev *eventsv1.Event) time.Time {
	switch {
	case ev.Series != nil:
		return ev.Series.LastObservedTime.Time
	case !ev.EventTime.IsZero():
		return ev.EventTime.Time
	case !ev.DeprecatedLastTimestamp.IsZero():
		return ev.DeprecatedLastTimestamp.Time
	}
	return ev.CreationTimestamp.Time
}

// chart draws the calls of each of the last 24 hours as a bar, allowed
// (█) then denied (░), scaled to the busiest hour.
func chart(out io.Writer, u *kw.Usage, now time.Time) {
	const width = 40
	type hour struct{ allowed, denied int64 }
	end := now.UTC().Truncate(time.Hour)
	hours := make([]hour, 24)
	if u != nil {
		for _, h := range u.Hours {
			i := 23 - int(end.Sub(h.Start.UTC())/time.Hour)
			if i >= 0 && i < 24 {
				hours[i].allowed += h.Allowed
				hours[i].denied += h.Denied
			}
		}
	}
	var most int64
	for _, h := range hours {
		most = max(most, h.allowed+h.denied)
	}
	for i, h := range hours {
		start := end.Add(time.Duration(i-23) * time.Hour)
		bar := ""
		if most > 0 {
			a := int((h.allowed*width + most - 1) / most)
			d := int((h.denied*width + most - 1) / most)
			bar = strings.Repeat("█", a) + strings.Repeat("░", d)
		}
		line := fmt.Sprintf("  %s  %-*s", start.Format("15:04"), width, bar)
		if h.allowed+h.denied > 0 {
			line += fmt.Sprintf(" %d", h.allowed)
			if h.denied > 0 {
				line += fmt.Sprintf(" (+%d denied)", h.denied)
			}
		}
		fmt.Fprintln(out, strings.TrimRight(line, " "))
	}
	if most == 0 {
		fmt.Fprintln(out, "  (no calls in the last 24 hours)")
	} else {
		fmt.Fprintln(out, "  █ allowed  ░ denied")
	}
}
