// Command mcpd is the daemon: it serves microcontrollers a local LLM over
// UDP and serial links (docs/protocol.md).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mcpd-project/mcpd/daemon"
)

var version = "dev"

// fileConfig is the JSON config file; flags override it.
type fileConfig struct {
	ListenUDP     []string `json:"listen_udp"`
	Serial        []string `json:"serial"`
	Backend       string   `json:"backend"`
	Model         string   `json:"model"`
	Threads       int      `json:"threads"`
	ContextSize   int      `json:"context_size"`
	MaxConcurrent int      `json:"max_concurrent"`
	MaxQueue      int      `json:"max_queue"`
	MaxSessions   int      `json:"max_sessions"`
	Heartbeat     string   `json:"heartbeat"`
	LogLevel      string   `json:"log_level"`
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "mcpd:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpd [flags]\n\nServes microcontrollers a local LLM over UDP and serial links, speaking\nMCPFrame (docs/protocol.md). With no link flags it listens on UDP\n127.0.0.1:7700; binding to all interfaces is an explicit --listen-udp :7700.\n\nFlags:")
		fs.PrintDefaults()
	}
	var cfg fileConfig
	var udp, ser multiFlag
	configPath := fs.String("config", "", "JSON config file (flags given on the command line override it)")
	fs.Var(&udp, "listen-udp", "UDP address to listen on (repeatable)")
	fs.Var(&ser, "serial", "serial port PATH[:BAUD[:8N1]] (repeatable; globs like /dev/ttyUSB* pick up devices plugged in later)")
	backend := fs.String("backend", "auto", "inference engine: auto, native (in-process llama.cpp) or ollama")
	model := fs.String("model", "", "GGUF file (native) or model name (ollama)")
	threads := fs.Int("threads", 0, "CPU threads for the native engine (default: all cores)")
	ctxSize := fs.Int("ctx", 0, "context size in tokens (default: the model's, at most 4096)")
	maxConc := fs.Int("max-concurrent", 0, "requests running at once (default 2)")
	maxQueue := fs.Int("max-queue", 0, "requests waiting for the engine before BUSY (default 16; -1 none)")
	maxSessions := fs.Int("max-sessions", 0, "devices at once (default 256)")
	heartbeat := fs.Duration("heartbeat", 0, "device heartbeat interval (default 5s)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see mcpd -h)", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(stderr, "mcpd", version)
		return nil
	}
	if *configPath != "" {
		raw, err := os.ReadFile(*configPath)
		if err != nil {
			return err
		}
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return fmt.Errorf("config %s: %w", *configPath, err)
		}
	}
	// Flags set on the command line win over the file.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["listen-udp"] || (len(cfg.ListenUDP) == 0 && len(cfg.Serial) == 0 && len(ser) == 0) {
		cfg.ListenUDP = udp
	}
	if set["serial"] {
		cfg.Serial = ser
	}
	pick := func(name string, flagVal string, fileVal *string) {
		if set[name] || *fileVal == "" {
			*fileVal = flagVal
		}
	}
	pick("backend", *backend, &cfg.Backend)
	pick("model", *model, &cfg.Model)
	pick("log-level", *logLevel, &cfg.LogLevel)
	pickInt := func(name string, flagVal int, fileVal *int) {
		if set[name] || *fileVal == 0 {
			*fileVal = flagVal
		}
	}
	pickInt("threads", *threads, &cfg.Threads)
	pickInt("ctx", *ctxSize, &cfg.ContextSize)
	pickInt("max-concurrent", *maxConc, &cfg.MaxConcurrent)
	pickInt("max-queue", *maxQueue, &cfg.MaxQueue)
	pickInt("max-sessions", *maxSessions, &cfg.MaxSessions)
	hb := *heartbeat
	if !set["heartbeat"] && cfg.Heartbeat != "" {
		d, err := time.ParseDuration(cfg.Heartbeat)
		if err != nil {
			return fmt.Errorf("config heartbeat: %w", err)
		}
		hb = d
	}
	if len(cfg.ListenUDP) == 0 && len(cfg.Serial) == 0 {
		cfg.ListenUDP = []string{"127.0.0.1:7700"}
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", cfg.LogLevel)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var links []daemon.Link
	for _, a := range cfg.ListenUDP {
		l, err := daemon.ListenUDP(a)
		if err != nil {
			return err
		}
		links = append(links, l)
	}
	for _, s := range cfg.Serial {
		sc, err := daemon.ParseSerial(s)
		if err != nil {
			return err
		}
		links = append(links, daemon.NewSerialLink(sc, log))
	}

	b, err := openBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer b.Close()
	d, err := daemon.New(daemon.Config{
		MaxConcurrent: cfg.MaxConcurrent, MaxQueue: cfg.MaxQueue, MaxSessions: cfg.MaxSessions, Heartbeat: hb,
	}, b, log)
	if err != nil {
		return err
	}
	log.Info("mcpd ready", "version", version, "backend", b.Name(), "links", len(links))
	return d.Run(ctx, links...)
}
