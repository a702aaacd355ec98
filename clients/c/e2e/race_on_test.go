//go:build race

package e2e

// raceEnabled: mcpd is built with -race too, so the packages `go test
// -race` already compiled (llama.cpp through cgo included) are reused.
const raceEnabled = true
