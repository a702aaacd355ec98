// Package bench holds the benchmarks behind `make bench-report` that need
// the whole stack: each measures a path through the daemon against its
// baseline in the same run — the in-process engine through the daemon
// against the raw engine loop, the Ollama backend through the daemon
// against Ollama's own api.Client — so the report states ratios, never
// bare figures. bench/mkreport writes the dated report; docs/bench.md
// explains it.
package bench
