// Package systemd is mcpd's glue to systemd: readiness and status
// notifications (notify.go), the service watchdog (watchdog.go), UDP
// sockets passed by socket activation (activation.go) and logging to the
// journal with structured fields (journal.go). Each part falls back to
// doing nothing, or to plain behaviour, when mcpd does not run under
// systemd. The unit files beside this package are what a package installs
// (docs/systemd.md).
package systemd
