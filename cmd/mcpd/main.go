// Command mcpd is the daemon: it serves microcontrollers a local LLM over
// UDP and serial links (docs/protocol.md).
package main

import (
	"context"
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

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal the daemon drains; a second one ends it at once.
	go func() { <-ctx.Done(); stop() }()
	if err := run(ctx, os.Args[1:], getenvFromOS, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		var fe flagError
		if errors.As(err, &fe) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "mcpd:", err)
		os.Exit(1)
	}
}

const usage = `usage: mcpd [flags]

Serves microcontrollers a local LLM over UDP and serial links, speaking
MCPFrame (docs/protocol.md).

Configuration, later sources winning: built-in defaults; the TOML file
(--config, or %s if it exists); MCPD_* environment variables
(MCPD_LISTEN_UDP and MCPD_SERIAL comma-separated, MCPD_BACKEND, MCPD_MODEL,
MCPD_LOG_LEVEL, MCPD_LOG_FORMAT, MCPD_HTTP_LISTEN, MCPD_THREADS, MCPD_MAX_CONCURRENT, MCPD_MAX_QUEUE,
MCPD_MAX_SESSIONS, MCPD_OLLAMA_URL comma-separated, MCPD_OLLAMA_MODEL,
MCPD_OLLAMA_KEEP_ALIVE, MCPD_FALLBACK); then these flags. With no link configured it listens on
UDP 127.0.0.1:7700 only; all interfaces is an explicit --listen-udp :7700.

Flags:
`

// flagError is a bad command line the flag package has printed already,
// with the usage: main must not print it again.
type flagError struct{ err error }

func (f flagError) Error() string { return f.err.Error() }
func (f flagError) Unwrap() error { return f.err }

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcpd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, usage, DefaultConfigPath); fs.PrintDefaults() }
	var udp, ser multiFlag
	configPath := fs.String("config", "", "TOML config file (default "+DefaultConfigPath+" if it exists)")
	fs.Var(&udp, "listen-udp", "UDP address to listen on (repeatable)")
	fs.Var(&ser, "serial", "serial port PATH[:BAUD[:8N1]] (repeatable; globs like /dev/ttyUSB* pick up devices plugged in later)")
	var mqttURLs multiFlag
	fs.Var(&mqttURLs, "mqtt", "MQTT broker URL, tcp://[user:password@]host:1883 or mqtts://… (repeatable; replaces the config's [[mqtt]] entries)")
	mqttGroup := fs.String("mqtt-group", "", "share the broker's devices with the other mcpd instances of this group (shared subscription)")
	mqttUser := fs.String("mqtt-user", "", "MQTT username for the --mqtt brokers")
	mqttPasswordFile := fs.String("mqtt-password-file", "", "file holding the MQTT password for the --mqtt brokers")
	backend := fs.String("backend", "auto", "inference engine: auto, native (in-process llama.cpp) or ollama")
	applyBackendFlags := backendFlags(fs)
	applyCacheFlags := cacheFlags(fs)
	model := fs.String("model", "", "GGUF file (native) or model name (ollama)")
	threads := fs.Int("threads", 0, "CPU threads for the native engine (default: all cores)")
	ctxSize := fs.Int("ctx", 0, "context size per request in tokens (default: the model's, at most 2048)")
	maxConc := fs.Int("max-concurrent", 0, "requests running at once (default: the engine's capacity — 8 batched sequences in-process, or Ollama's parallel slots)")
	maxQueue := fs.Int("max-queue", 0, "requests waiting for the engine before BUSY (default 16; -1 none)")
	maxSessions := fs.Int("max-sessions", 0, "devices at once (default 256)")
	heartbeat := fs.Duration("heartbeat", 0, "device heartbeat interval (default 5s)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", logAuto, "auto (the journal under systemd, else logfmt), logfmt or json")
	httpListen := fs.String("http", "", "local HTTP endpoint (status, metrics, /v1/generate) host:port, or off (default 127.0.0.1:7701)")
	checkConfig := fs.Bool("check-config", false, "validate the configuration, print it, and exit")
	showVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return flagError{err} // printed already, with the usage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (see mcpd -h)", fs.Arg(0))
	}
	if *showVersion {
		fmt.Fprintln(stdout, "mcpd", version)
		return nil
	}

	// resolve builds the configuration from its sources; a reload (SIGHUP)
	// calls it again: the file and the environment are re-read, the flags
	// still win.
	resolve := func() (config, error) {
		cfg := defaultConfig()
		if *configPath != "" {
			if err := cfg.loadFile(*configPath, true); err != nil {
				return cfg, err
			}
		} else if err := cfg.loadFile(DefaultConfigPath, false); err != nil {
			return cfg, err
		}
		if err := cfg.loadEnv(getenv); err != nil {
			return cfg, err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		apply := func(name string, f func()) {
			if set[name] {
				f()
			}
		}
		apply("listen-udp", func() { cfg.ListenUDP = udp })
		apply("serial", func() { cfg.Serial = ser })
		apply("mqtt", func() {
			cfg.MQTT = nil
			for _, u := range mqttURLs {
				cfg.MQTT = append(cfg.MQTT, mqttSection{URL: u})
			}
		})
		for i := range cfg.MQTT {
			apply("mqtt-group", func() { cfg.MQTT[i].Group = *mqttGroup })
			apply("mqtt-user", func() { cfg.MQTT[i].Username = *mqttUser })
			apply("mqtt-password-file", func() { cfg.MQTT[i].Password, cfg.MQTT[i].PasswordFile = "", *mqttPasswordFile })
		}
		apply("backend", func() { cfg.Backend = *backend })
		applyBackendFlags(&cfg, set)
		applyCacheFlags(&cfg, set)
		apply("model", func() { cfg.Model = *model })
		apply("log-level", func() { cfg.LogLevel = *logLevel })
		apply("log-format", func() { cfg.LogFormat = *logFormat })
		apply("http", func() { cfg.HTTP.Listen = *httpListen })
		apply("threads", func() { cfg.Engine.Threads = *threads })
		apply("ctx", func() { cfg.Engine.ContextSize = *ctxSize })
		apply("max-concurrent", func() { cfg.Limits.MaxConcurrent = *maxConc })
		apply("max-queue", func() { cfg.Limits.MaxQueue = *maxQueue })
		apply("max-sessions", func() { cfg.Limits.MaxSessions = *maxSessions })
		apply("heartbeat", func() { cfg.Limits.Heartbeat.Duration = *heartbeat })
		if len(cfg.ListenUDP) == 0 && len(cfg.Serial) == 0 && len(cfg.MQTT) == 0 {
			cfg.ListenUDP = []string{"127.0.0.1:7700"}
		}
		return cfg, nil
	}
	cfg, err := resolve()
	if err != nil {
		return err
	}
	p, err := prepare(cfg) // reload.go
	if err != nil {
		return err
	}
	dcfg, serials, brokers, keys := p.daemon, p.serials, p.mqtt, p.daemon.Keys
	level := new(slog.LevelVar) // a reload may change it
	level.Set(p.level)
	log, lastErr := newLogger(stderr, level, cfg.LogFormat) // journald under systemd unless told (service.go)
	for _, f := range cfg.exposed {
		log.Warn("the config holds device keys or a password and group or others may read it: chmod 600 it (secrets_mode = \"refuse\" makes this fatal)", "file", f)
	}
	if *checkConfig {
		lim := dcfg.WithDefaults()
		lim.Keys = nil // printed as a count: keys never reach output
		var mqttNames []string
		for _, m := range brokers {
			l, err := daemon.NewMQTTLink(m, nil) // reads the TLS files: a bad one fails the check
			if err != nil {
				return err
			}
			mqttNames = append(mqttNames, l.Name())
		}
		fmt.Fprintf(stdout, "configuration ok: udp %v, serial %v, mqtt %v, backend %s, model %q, %d device keys\n\n",
			cfg.ListenUDP, cfg.Serial, mqttNames, cfg.Backend, cfg.Model, len(keys))
		if err := writeEffective(stdout, cfg, lim); err != nil { // by the file's key names (configcheck.go)
			return err
		}
		if problem := modelProblem(cfg); problem != nil {
			fmt.Fprintf(stdout, "model: %s: mcpd starts anyway, answers devices MODEL_NOT_FOUND and loads the model once it is there\n",
				problem.waitingFor())
		}
		return nil
	}

	// systemd: notify, watchdog, socket activation, SIGHUP (service.go).
	svc := newService(ctx, log, lastErr, level, getenv)
	defer svc.stop()
	links, err := svc.openLinks(cfg, serials, brokers)
	if err != nil {
		return err
	}
	svc.status("loading model " + cfg.Model)
	key := engineSettings(cfg)
	b, problem, err := svc.openEngine(ctx, cfg)
	if err != nil {
		closeLinks(links)
		return err
	}
	svc.engineOpened(key, problem)
	followCapacity(&dcfg, b, log)
	d, err := daemon.New(dcfg, b, log)
	if err != nil {
		b.Close()
		closeLinks(links)
		return err
	}
	b = currentEngine{d} // the engine in use, which a reload may replace
	obs, err := setupObservability(ctx, cfg, getenv, d, b, log)
	if err != nil {
		d.Backend().Close()
		closeLinks(links)
		return err
	}
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	httpDone := make(chan struct{})
	go func() { obs.serve(httpCtx, d, cfg, b, log); close(httpDone) }()
	defer func() {
		stopHTTP()
		<-httpDone
		flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = obs.shutdown(flush)
	}()
	start := time.Now()
	err = svc.serve(ctx, d, links, resolve) // closes the engine
	log.Info("mcpd stopped", "uptime", time.Since(start).Round(time.Second))
	return err
}
