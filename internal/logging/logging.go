// Package logging builds keyward's structured logger: controller-runtime's
// zap logger, configured by its usual flags (--zap-log-level,
// --zap-encoder, --zap-devel, --zap-stacktrace-level, --zap-time-encoding),
// with two rules of keyward's on top: every line is redacted before it is
// written (Redact), and verbosity is capped at MaxVerbosity.
package logging

import (
	"flag"
	"io"

	"github.com/go-logr/logr"
	"go.uber.org/zap/zapcore"
	crzap "sigs.k8s.io/controller-runtime/pkg/log/zap"
)

// MaxVerbosity is the most verbose level keyward logs at, whatever is asked.
// client-go logs request headers at 7 and bodies at 8 through the same
// logger, and those would carry Secrets' contents and bearer tokens.
const MaxVerbosity = 5

// Options are controller-runtime's zap options.
type Options = crzap.Options

// BindFlags adds controller-runtime's zap flags to fs and returns the
// options they fill.
func BindFlags(fs *flag.FlagSet) *Options {
	o := &Options{}
	o.BindFlags(fs)
	return o
}

// FromOptions returns the logger o describes, writing to w through the
// redacting writer and never more verbose than MaxVerbosity. Without a
// level it logs at info (debug with --zap-devel), as controller-runtime does.
func FromOptions(o *Options, w io.Writer) logr.Logger {
	return fromOptions(o, RedactingWriter(w))
}

// New returns a JSON logger writing to w at the given verbosity (0 is
// informational only), clamped to MaxVerbosity, every line redacted.
func New(w io.Writer, verbosity int) logr.Logger {
	return FromOptions(&Options{Level: zapcore.Level(-verbosity)}, w)
}

// NewUnredacted is New without redaction. Only tests use it, to show that
// the secret scans find what redaction would have hidden.
func NewUnredacted(w io.Writer, verbosity int) logr.Logger {
	return fromOptions(&Options{Level: zapcore.Level(-verbosity)}, w)
}

func fromOptions(o *Options, w io.Writer) logr.Logger {
	opts := *o
	opts.DestWriter = w
	level := opts.Level
	if level == nil {
		level = zapcore.InfoLevel
		if opts.Development {
			level = zapcore.DebugLevel
		}
	}
	opts.Level = capped{level}
	return crzap.New(crzap.UseFlagOptions(&opts))
}

// capped enables what its level enables, down to MaxVerbosity.
type capped struct{ zapcore.LevelEnabler }

func (c capped) Enabled(l zapcore.Level) bool {
	return l >= zapcore.Level(-MaxVerbosity) && c.LevelEnabler.Enabled(l)
}
