// Package ollama is the engine that sends requests to one or more Ollama
// servers through Ollama's own Go client (github.com/ollama/ollama/api),
// behind backends.Backend.
//
// Each endpoint sits behind a circuit breaker (breaker.go) and is probed
// in the background for the model and for what it holds in GPU memory
// (probe.go); a request goes to the healthy endpoint with the fewest
// requests in flight and is retried, before its first token only, on
// another (generate.go, endpoints.go). Failures are typed (errors.go) and
// unwrap to the backends errors. Pure Go: no cgo.
package ollama
