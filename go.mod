module github.com/mcpd-project/mcpd

go 1.26.0

require (
	github.com/ollama/ollama v0.17.4
	golang.org/x/sys v0.50.0
)
