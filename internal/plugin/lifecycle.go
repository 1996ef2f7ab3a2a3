package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

func tokenCommand(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "token NAME",
		Short: "Print a key's current token, from its Secret",
		Long: `Print the current token of an ApiKey, read from the Secret keyward wrote it
into. You need get on Secrets in the namespace; without it, mount the Secret
into the workload that uses the key instead.`,
		Example: `  kubectl keyward token partner-feed
  curl -H "x-api-key: $(kubectl keyward token partner-feed)" https://api.example.com/v1/occupancy`,
		Args:              exactName,
		ValidArgsFunction: completeKeys(e),
		RunE: func(cmd *cobra.Command, args []string) error {
			k, err := e.getKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if k.Status.KeyID == "" {
				return fmt.Errorf("ApiKey %s has no key (state %s: %s)", k.Name, dash(string(k.Status.State)), reasonOf(k))
			}
			sec, err := e.secretOf(cmd.Context(), k)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.Out, string(sec.Data[kw.SecretKeyToken]))
			return nil
		},
	}
}

type rotateOptions struct {
	grace   string
	wait    bool
	timeout time.Duration
}

func rotateCommand(e *env) *cobra.Command {
	var o rotateOptions
	c := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Replace a key with a new one; the previous keeps working for a grace period",
		Long: `Raise the ApiKey's rotation generation: keyward writes a new key into the same
Secret (mounted files follow), and the previous key keeps working until its
grace period ends (spec.rotation.gracePeriod, 24h by default, or --grace).`,
		Example: `  kubectl keyward rotate partner-feed --wait
  kubectl keyward rotate robot --grace 1h --wait -n team-a`,
		Args:              exactName,
		ValidArgsFunction: completeKeys(e),
		RunE:              func(cmd *cobra.Command, args []string) error { return e.rotate(cmd.Context(), args[0], o) },
	}
	c.Flags().StringVar(&o.grace, "grace", "", "how long the previous key keeps working (sets spec.rotation.gracePeriod): 1h, 0s")
	c.Flags().BoolVar(&o.wait, "wait", false, "wait for the new key and say when the previous one stops working")
	c.Flags().DurationVar(&o.timeout, "timeout", time.Minute, "how long to wait with --wait")
	return c
}

func (e *env) rotate(ctx context.Context, name string, o rotateOptions) error {
	k, err := e.getKey(ctx, name)
	if err != nil {
		return err
	}
	if k.Spec.Archived {
		return fmt.Errorf("ApiKey %s is archived: an archived key is never rotated; create a new one", name)
	}
	rot := map[string]any{"generation": k.DesiredGeneration() + 1}
	if o.grace != "" {
		d, err := time.ParseDuration(o.grace)
		if err != nil || d < 0 {
			return fmt.Errorf("--grace %q is not a duration such as 1h, 90m or 0s", o.grace)
		}
		rot["gracePeriod"] = d.String()
	}
	before := k.Status.KeyID
	// Against the resourceVersion read: two rotations at once raise the
	// generation once each, never both to the same number.
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": k.ResourceVersion},
		"spec": map[string]any{"rotation": rot}})
	if err := e.c.Patch(ctx, k, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("rotate %s: %w", name, err)
	}
	gen := k.DesiredGeneration()
	if !o.wait {
		say(e.Out, "Rotation of %s requested (generation %d); kubectl keyward describe %s shows the new key once issued.", name, gen, name)
		return nil
	}
	say(e.ErrOut, "Rotation of %s requested (generation %d); waiting for the new key", name, gen)
	k, err = e.waitFor(ctx, name, o.timeout, func(k *kw.ApiKey) (bool, error) {
		done, err := settled(k)
		return done && k.Status.KeyID != before, err
	})
	if err != nil {
		return err
	}
	say(e.Out, "New key %s is in Secret %s.", k.Status.KeyID, k.Status.SecretName)
	for _, p := range k.Status.PreviousKeys {
		if p.KeyID == before {
			say(e.Out, "The previous key %s works until %s (%s).", before, p.RevokesAt.UTC().Format(time.RFC3339), until(e.now(), &p.RevokesAt))
		}
	}
	say(e.Out, "Workloads that read the key from a mounted file see the new one within a minute; those that took it into an "+
		"environment variable keep the old one until they restart: restart them before the grace period ends.")
	return nil
}

type archiveOptions struct {
	yes      bool
	endpoint string
	timeout  time.Duration
}

func archiveCommand(e *env) *cobra.Command {
	var o archiveOptions
	c := &cobra.Command{
		Use:   "archive NAME",
		Short: "Revoke a key for good, after showing what it still does",
		Long: `Archive an ApiKey: its key stops working at once, for good (the ApiKey stays,
for audit). First it shows the key's calls in the last 24 hours and when it
was last used, and asks to confirm unless --yes. Then it checks the key is
refused: the endpoint the key is used against must answer 401.`,
		Example: `  kubectl keyward archive partner-feed
  kubectl keyward archive old-robot --yes -n team-a
  kubectl keyward archive partner-feed --endpoint http://localhost:8180/authn   # through a port-forward`,
		Args:              exactName,
		ValidArgsFunction: completeKeys(e),
		RunE:              func(cmd *cobra.Command, args []string) error { return e.archive(cmd.Context(), args[0], o) },
	}
	c.Flags().BoolVarP(&o.yes, "yes", "y", false, "do not ask for confirmation")
	c.Flags().StringVar(&o.endpoint, "endpoint", "", "URL to check the key is refused at (default: the ApiKey's status.endpoint)")
	c.Flags().DurationVar(&o.timeout, "timeout", 30*time.Second, "how long to wait for the archival")
	return c
}

func (e *env) archive(ctx context.Context, name string, o archiveOptions) error {
	k, err := e.getKey(ctx, name)
	if err != nil {
		return err
	}
	if k.Spec.Archived {
		say(e.Out, "ApiKey %s/%s is archived already (since %s).", k.Namespace, name, whenArchived(k))
		return nil
	}
	allowed, denied, _ := calls(k)
	say(e.Out, "ApiKey %s/%s, key %s: %d calls allowed and %d denied in the last 24 hours, last used %s.",
		k.Namespace, name, dash(k.Status.KeyID), allowed, denied, lastUsed(e.now(), k.Status.LastUsedAt))
	if !o.yes && !e.confirm("Archive it? Its key stops working at once and for good.") {
		return errors.New("not archived")
	}
	// The token, to check the key is refused once archived (the Secret
	// goes with the archival). Without the right to read it, no check.
	var token string
	if sec, err := e.secretOf(ctx, k); err == nil {
		token = string(sec.Data[kw.SecretKeyToken])
	}
	patch := client.RawPatch(types.MergePatchType, []byte(`{"spec":{"archived":true}}`))
	if err := e.c.Patch(ctx, k, patch); err != nil {
		return fmt.Errorf("archive %s: %w", name, err)
	}
	k, err = e.waitFor(ctx, name, o.timeout, func(k *kw.ApiKey) (bool, error) {
		return current(k) && k.Status.State == kw.StateArchived, nil
	})
	if err != nil {
		return err
	}
	say(e.Out, "Archived: key %s no longer works.", dash(k.Status.KeyID))
	url := o.endpoint
	if url == "" {
		url = k.Status.Endpoint
	}
	switch code, err := probe(ctx, url, token); {
	case token == "":
		say(e.Out, "Could not check at the endpoint: you may not read the key's Secret, so there is no token to try.")
	case url == "":
		say(e.Out, "Could not check at the endpoint: the ApiKey names none (--endpoint gives one).")
	case err != nil:
		say(e.Out, "Could not check at %s: %v", url, err)
	case code == http.StatusUnauthorized:
		say(e.Out, "Checked: %s answers 401 for it.", url)
	case code >= 200 && code < 300:
		return fmt.Errorf("%s still answers %d for the archived key; the gateway there may not ask keyward", url, code)
	default:
		say(e.Out, "Could not check at %s: it answered %d, not a check's answer (--endpoint names keyward's)", url, code)
	}
	return nil
}

func whenArchived(k *kw.ApiKey) string {
	if k.Status.ArchivedAt != nil {
		return k.Status.ArchivedAt.UTC().Format(time.RFC3339)
	}
	return "a moment"
}

// probe presents token at url and returns the status. A URL with no path
// that answers 404 is tried again at /authn: keyward's own endpoint, as
// keyward dev names it.
func probe(ctx context.Context, url, token string) (int, error) {
	if url == "" || token == "" {
		return 0, nil
	}
	code, err := probeOnce(ctx, url, token)
	if code == http.StatusNotFound && !strings.Contains(strings.TrimPrefix(strings.TrimPrefix(url, "https://"), "http://"), "/") {
		return probeOnce(ctx, strings.TrimSuffix(url, "/")+"/authn", token)
	}
	return code, err
}

func probeOnce(ctx context.Context, url, token string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Api-Key", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		// Not err itself: it could quote the request; the URL is known.
		return 0, errors.New("no answer")
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}
