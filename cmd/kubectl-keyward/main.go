// kubectl-keyward is the kubectl plugin of keyward: put it on PATH and run
// `kubectl keyward`. See internal/plugin.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"keyward.dev/keyward/internal/plugin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cmd := plugin.NewCommand(genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	if err := cmd.ExecuteContext(ctx); err != nil {
		if !plugin.Findings(err) { // audit printed its findings already
			fmt.Fprintln(os.Stderr, "error:", err)
		}
		os.Exit(plugin.ExitCode(err))
	}
}
