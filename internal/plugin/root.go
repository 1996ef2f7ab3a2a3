// Package plugin is `kubectl keyward`: a kubectl plugin that creates a key
// and shows it once, lists and describes keys with their usage, prints a
// key's token, rotates, archives after showing what the key still does, and
// audits keys for CI. It talks to the API server as the user, with
// kubectl's own flags (cli-runtime's ConfigFlags: --kubeconfig, --context,
// --namespace, ...), and never logs or stores a key.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// ExitFindings is the exit code of `audit` when it found something, for CI.
const ExitFindings = 1

// errFindings ends `audit` with ExitFindings, its table already printed.
var errFindings = errors.New("findings")

// Findings reports whether err is audit's "there are findings".
func Findings(err error) bool { return errors.Is(err, errFindings) }

// ExitCode is the process exit code for an error Execute returned.
func ExitCode(err error) int {
	if errors.Is(err, errFindings) {
		return ExitFindings
	}
	return 1
}

// env is what every command works with: the streams, kubectl's flags,
// and, once connected, a client.
type env struct {
	genericiooptions.IOStreams
	flags *genericclioptions.ConfigFlags
	c     client.Client
	ns    string
	// now is the clock (tests of the output pin it through KEYWARD_NOW).
	now func() time.Time
	// confirm reads a yes or no from In.
	confirm func(prompt string) bool
}

// connect makes the client and finds the namespace (-n, or the context's).
func (e *env) connect() error {
	if e.c != nil {
		return nil
	}
	cfg, err := e.flags.ToRESTConfig()
	if err != nil {
		return err
	}
	cfg.UserAgent = "kubectl-keyward"
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return err
	}
	if err := kw.AddToScheme(s); err != nil {
		return err
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return err
	}
	ns, _, err := e.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return err
	}
	e.c, e.ns = c, ns
	return nil
}

// NewCommand is `kubectl keyward` with its subcommands.
func NewCommand(streams genericiooptions.IOStreams) *cobra.Command {
	e := &env{IOStreams: streams, flags: genericclioptions.NewConfigFlags(true), now: fixedNow()}
	e.confirm = func(prompt string) bool {
		fmt.Fprint(e.ErrOut, prompt+" [y/N] ")
		var answer string
		_, _ = fmt.Fscanln(e.In, &answer)
		return strings.EqualFold(answer, "y") || strings.EqualFold(answer, "yes")
	}
	root := &cobra.Command{
		Use:   "kubectl keyward",
		Short: "Create, list, rotate, archive and audit keyward API keys",
		Long: `kubectl keyward works with keyward's ApiKeys as a person would: create a key
and see it once, list keys with their calls in the last 24 hours, rotate,
archive after seeing what a key still does, audit keys in CI.

It uses kubectl's configuration and flags (--kubeconfig, --context,
--namespace, ...) and your own permissions: creating keys needs the edit
role in the namespace, reading a token the right to get its Secret.`,
		Example: `  kubectl keyward create partner-feed --scope occupancy:read --expires-in 90d
  kubectl keyward list -A --sort-by calls
  kubectl keyward archive partner-feed`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	e.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(createCommand(e), listCommand(e), describeCommand(e), tokenCommand(e), rotateCommand(e),
		archiveCommand(e), auditCommand(e))
	root.CompletionOptions.HiddenDefaultCmd = false
	return root
}

// completeKeys completes ApiKey names in the namespace of the command line.
func completeKeys(e *env) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, prefix string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 || e.connect() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var list kw.ApiKeyList
		if err := e.c.List(cmd.Context(), &list, client.InNamespace(e.ns)); err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []string
		for _, k := range list.Items {
			if strings.HasPrefix(k.Name, prefix) {
				names = append(names, k.Name)
			}
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

// getKey reads one ApiKey, with a message that says what to do when it is
// not there or not readable.
func (e *env) getKey(ctx context.Context, name string) (*kw.ApiKey, error) {
	if err := e.connect(); err != nil {
		return nil, err
	}
	k := &kw.ApiKey{}
	err := e.c.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: name}, k)
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("no ApiKey %q in namespace %s (kubectl keyward list -n %s shows its keys)", name, e.ns, e.ns)
	case apierrors.IsForbidden(err):
		return nil, fmt.Errorf("you may not read ApiKeys in namespace %s: %w", e.ns, err)
	case err != nil:
		return nil, err
	}
	return k, nil
}

// say writes a line to the human stream (stderr when stdout is machine
// output).
func say(w io.Writer, format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
