package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Created is what `create -o json` prints: everything a script needs to
// use the key at once.
type Created struct {
	Namespace  string     `json:"namespace"`
	Name       string     `json:"name"`
	KeyID      string     `json:"keyId"`
	Token      string     `json:"token"`
	Endpoint   string     `json:"endpoint"`
	SecretName string     `json:"secretName"`
	Scopes     []string   `json:"scopes"`
	ExpiresAt  *time.Time `json:"expiresAt,omitempty"`
}

type createOptions struct {
	scopes                                   []string
	description, displayName, secretName     string
	expiresIn, expiresAt, rotateEvery, grace string
	dryRun, output                           string
	timeout                                  time.Duration
}

func createCommand(e *env) *cobra.Command {
	var o createOptions
	c := &cobra.Command{
		Use:   "create NAME --scope SCOPE [--scope SCOPE...]",
		Short: "Create an ApiKey, wait for its key and show it once",
		Long: `Create an ApiKey, wait until keyward has issued its key, and print the
token and the endpoint to use it against. The token stays in the Secret
<name>-apikey (workloads mount it from there); this command shows it once.`,
		Example: `  kubectl keyward create partner-feed --scope occupancy:read --expires-in 90d
  kubectl keyward create robot --scope devices:write --rotate-every 90d --grace 24h -n team-a
  kubectl keyward create partner-feed --scope occupancy:read --dry-run=client -o yaml > partner-feed.yaml
  TOKEN=$(kubectl keyward create ci --scope api:read -o json | jq -r .token)`,
		Args: exactName,
		RunE: func(cmd *cobra.Command, args []string) error { return e.create(cmd, args[0], o) },
	}
	f := c.Flags()
	f.StringArrayVar(&o.scopes, "scope", nil, "a scope the key grants (repeat for more): occupancy:read, devices:*, *")
	f.StringVar(&o.description, "description", "", "what the key is for")
	f.StringVar(&o.displayName, "display-name", "", "a name for people")
	f.StringVar(&o.secretName, "secret-name", "", "the Secret that receives the key (default <name>-apikey)")
	f.StringVar(&o.expiresIn, "expires-in", "", "the key stops working after this long: 90d, 36h")
	f.StringVar(&o.expiresAt, "expires-at", "", "the key stops working at this time (RFC 3339)")
	f.StringVar(&o.rotateEvery, "rotate-every", "", "keyward rotates the key on this schedule: 90d")
	f.StringVar(&o.grace, "grace", "", "how long a rotated key keeps working (default 24h)")
	f.StringVar(&o.dryRun, "dry-run", "none", `"client" prints the ApiKey instead of creating it (with -o yaml or json), for Git`)
	f.StringVarP(&o.output, "output", "o", "", "json: print the result (or, with --dry-run=client, the manifest) as JSON; yaml: the manifest")
	f.DurationVar(&o.timeout, "timeout", time.Minute, "how long to wait for the key")
	_ = c.MarkFlagRequired("scope")
	return c
}

func exactName(cmd *cobra.Command, args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("%s takes one ApiKey name, got %d arguments (see --help)", cmd.Name(), len(args))
	}
	return nil
}

// manifest builds the ApiKey the flags describe.
func (e *env) manifest(name string, o createOptions) (*kw.ApiKey, error) {
	ns, _, err := e.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, err
	}
	k := &kw.ApiKey{TypeMeta: metav1.TypeMeta{APIVersion: kw.GroupVersion.String(), Kind: "ApiKey"},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       kw.ApiKeySpec{DisplayName: o.displayName, Description: o.description, SecretName: o.secretName}}
	for _, s := range o.scopes {
		k.Spec.Scopes = append(k.Spec.Scopes, kw.Scope(s))
	}
	switch {
	case o.expiresIn != "" && o.expiresAt != "":
		return nil, errors.New("give --expires-in or --expires-at, not both")
	case o.expiresIn != "":
		d, err := parseDuration(o.expiresIn)
		if err != nil {
			return nil, fmt.Errorf("--expires-in: %w", err)
		}
		t := metav1.NewTime(e.now().Add(d).UTC().Truncate(time.Second))
		k.Spec.ExpiresAt = &t
	case o.expiresAt != "":
		t, err := time.Parse(time.RFC3339, o.expiresAt)
		if err != nil {
			return nil, fmt.Errorf("--expires-at %q is not an RFC 3339 time such as 2027-03-01T00:00:00Z", o.expiresAt)
		}
		mt := metav1.NewTime(t)
		k.Spec.ExpiresAt = &mt
	}
	if o.rotateEvery != "" || o.grace != "" {
		k.Spec.Rotation = &kw.Rotation{}
		if o.rotateEvery != "" {
			d, err := parseDuration(o.rotateEvery)
			if err != nil {
				return nil, fmt.Errorf("--rotate-every: %w", err)
			}
			k.Spec.Rotation.Every = &metav1.Duration{Duration: d}
		}
		if o.grace != "" {
			d, err := time.ParseDuration(o.grace)
			if err != nil || d < 0 {
				return nil, fmt.Errorf("--grace %q is not a duration such as 24h, 90m or 0s", o.grace)
			}
			k.Spec.Rotation.GracePeriod = &metav1.Duration{Duration: d}
		}
	}
	return k, nil
}

func (e *env) create(cmd *cobra.Command, name string, o createOptions) error {
	k, err := e.manifest(name, o)
	if err != nil {
		return err
	}
	switch o.dryRun {
	case "client":
		return printObject(e, k, o.output)
	case "none", "":
	default:
		return fmt.Errorf("--dry-run=%s: only client (print the ApiKey) is known", o.dryRun)
	}
	if o.output != "" && o.output != "json" {
		return fmt.Errorf("-o %s: create prints its result as json, or the manifest with --dry-run=client", o.output)
	}
	if err := e.connect(); err != nil {
		return err
	}
	ctx := cmd.Context()
	if err := e.c.Create(ctx, k); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("ApiKey %s/%s exists already; its token: kubectl keyward token %s -n %s", k.Namespace, name, name, k.Namespace)
		}
		return fmt.Errorf("the API server refused the ApiKey: %w", err)
	}
	say(e.ErrOut, "ApiKey %s/%s created; waiting for keyward to issue its key", k.Namespace, name)
	k, err = e.waitFor(ctx, name, o.timeout, settled)
	if err != nil {
		return err
	}
	sec, err := e.secretOf(ctx, k)
	if err != nil {
		return fmt.Errorf("key %s is issued, but: %w", k.Status.KeyID, err)
	}
	token := string(sec.Data[kw.SecretKeyToken])
	endpoint := string(sec.Data[kw.SecretKeyEndpoint])
	if o.output == "json" {
		out := Created{Namespace: k.Namespace, Name: k.Name, KeyID: k.Status.KeyID, Token: token, Endpoint: endpoint,
			SecretName: sec.Name, Scopes: o.scopes}
		if k.Spec.ExpiresAt != nil {
			t := k.Spec.ExpiresAt.UTC()
			out.ExpiresAt = &t
		}
		enc := json.NewEncoder(e.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	expires := "never expires"
	if k.Spec.ExpiresAt != nil {
		expires = "expires " + k.Spec.ExpiresAt.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(e.Out, `Key %s issued for ApiKey %s/%s (%s; %s).

Copy the token now: this is the only time kubectl keyward shows it.

    %s

Use it against %s
    curl -H "x-api-key: $TOKEN" %s/...

It stays in Secret %s/%s for workloads: mount it, e.g.
    env:
    - name: API_KEY
      valueFrom: {secretKeyRef: {name: %s, key: token}}
`, k.Status.KeyID, k.Namespace, k.Name, k.Status.Scopes, expires, token, endpoint, endpoint, k.Namespace, sec.Name, sec.Name)
	return nil
}

// printObject prints an object as kubectl -o yaml or -o json would.
func printObject(e *env, obj any, output string) error {
	switch output {
	case "yaml", "":
		b, err := yaml.Marshal(obj)
		if err != nil {
			return err
		}
		_, err = e.Out.Write(b)
		return err
	case "json":
		enc := json.NewEncoder(e.Out)
		enc.SetIndent("", "    ")
		return enc.Encode(obj)
	}
	return fmt.Errorf("-o %s: use yaml or json", output)
}
