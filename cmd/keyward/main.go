// Command keyward issues, checks and revokes API keys on Kubernetes.
//
//	keyward controller   reconcile ApiKeys (issue, record, deliver, revoke)
//	keyward authn        the auth endpoint gateways ask
//	keyward dev          everything on a local control plane, for trying it out
//	keyward version      the version, commit and Go that built the binary
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyward:", err)
		if errors.As(err, new(usageError)) || strings.HasPrefix(err.Error(), "unknown command") {
			os.Exit(2)
		}
		os.Exit(1)
	}
}
