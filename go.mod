module github.com/mcpd-project/mcpd

go 1.26.0

require (
	github.com/creack/pty v1.1.24
	github.com/ollama/ollama v0.17.4
	go.bug.st/serial v1.8.0
	golang.org/x/sys v0.50.0
)
