//go:build !mcpdfault

package main

import (
	"log/slog"

	"github.com/mcpd-project/mcpd/backends"
)

// withFaults returns b unchanged: fault injection exists only in test
// builds (-tags mcpdfault, fault_on.go).
func withFaults(b backends.Backend, _ *slog.Logger) backends.Backend { return b }

// faultLoadDelay does nothing outside test builds.
func faultLoadDelay(*slog.Logger) {}
