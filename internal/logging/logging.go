// Package logging builds keyward's structured logger.
package logging

import (
	"io"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// MaxVerbosity is the most verbose level keyward logs at, whatever is asked.
// client-go logs request headers at 7 and bodies at 8 through the same
// logger, and those would carry Secrets' contents and bearer tokens.
const MaxVerbosity = 5

// New returns a JSON logger writing to w at the given verbosity (0 is
// informational only), clamped to MaxVerbosity. Every line is redacted
// (Redact) before it is written.
func New(w io.Writer, verbosity int) logr.Logger {
	return newLogger(RedactingWriter(w), verbosity)
}

// NewUnredacted is New without redaction. Only tests use it, to show that
// the secret scans find what redaction would have hidden.
func NewUnredacted(w io.Writer, verbosity int) logr.Logger { return newLogger(w, verbosity) }

func newLogger(w io.Writer, verbosity int) logr.Logger {
	verbosity = max(0, min(verbosity, MaxVerbosity))
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	core := zapcore.NewCore(enc, zapcore.AddSync(w), zapcore.Level(-verbosity))
	return zapr.NewLogger(zap.New(core))
}
