package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/systemd"
)

// service runs the daemon as a systemd service: readiness, status lines,
// the watchdog, socket activation, reload on SIGHUP and the stop sequence
// (docs/systemd.md). Without systemd all of it is inert except SIGHUP.
type service struct {
	log     *slog.Logger
	lastErr *lastError
	level   *slog.LevelVar
	notify  *systemd.Notifier
	hup     chan os.Signal

	daemon       atomic.Pointer[daemon.Daemon] // for the watchdog, once running
	stopWatchdog context.CancelFunc
	watchdogDone chan struct{}
	retiring     sync.WaitGroup // replaced engines waiting for their last request
	exiting      chan struct{}  // closed when serve returns: close replaced engines now

	// The configuration in force and the links made from it (reload.go).
	cur       config
	engineKey string            // engineSettings of the configuration the engine in use was opened with
	wait      *modelWait        // while the in-process engine has no usable model (waiting.go)
	activated bool              // UDP sockets came from systemd
	udp       map[string]string // udpKey(listen address) → link name
	serial    map[string]string // serial spec → link name
}

func newService(ctx context.Context, log *slog.Logger, lastErr *lastError, level *slog.LevelVar, getenv func(string) string) *service {
	s := &service{
		log: log, lastErr: lastErr, level: level,
		notify: systemd.NewNotifier(getenv),
		hup:    make(chan os.Signal, 1), exiting: make(chan struct{}),
		udp: map[string]string{}, serial: map[string]string{},
	}
	// From the start, so that a SIGHUP while the model loads is a reload
	// once serving, not the default action (exit).
	signal.Notify(s.hup, syscall.SIGHUP)

	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatchdog, s.watchdogDone = cancel, make(chan struct{})
	timeout, err := systemd.WatchdogInterval()
	if err != nil {
		log.Warn("watchdog settings unreadable; not pinging", "err", err)
	}
	w := &systemd.Watchdog{Timeout: timeout, Alive: s.alive, Ping: s.notify.Watchdog, Log: log}
	if timeout > 0 {
		log.Info("systemd watchdog on", "timeout", timeout, "ping_every", timeout/2)
	}
	go func() { defer close(s.watchdogDone); w.Run(wctx) }()
	return s
}

// alive is what the watchdog asks: before the daemon runs (the model is
// loading) yes — start-up has TimeoutStartSec; then the daemon's answer.
func (s *service) alive(now time.Time) error {
	if d := s.daemon.Load(); d != nil {
		return d.Alive(now)
	}
	return nil
}

// stop ends the watchdog and SIGHUP handling.
func (s *service) stop() {
	signal.Stop(s.hup)
	s.stopWatchdog()
	<-s.watchdogDone
}

func (s *service) status(text string) {
	if err := s.notify.Status(text); err != nil {
		s.log.Warn("systemd notify failed", "err", err)
	}
}

// openLinks makes the start-up links: the UDP sockets systemd passed, or
// else the configured addresses; and the serial ports.
func (s *service) openLinks(cfg config, serials map[string]daemon.SerialConfig, brokers []daemon.MQTTConfig) ([]daemon.Link, error) {
	inherited, err := systemd.UDPSockets()
	if err != nil {
		return nil, err
	}
	var links []daemon.Link
	if len(inherited) > 0 {
		s.activated = true
		for _, c := range inherited {
			links = append(links, daemon.NewUDPLink(c))
		}
		s.log.Info("socket activation: serving the UDP sockets systemd passed; listen_udp is not used",
			"sockets", len(inherited), "listen_udp", cfg.ListenUDP)
	} else {
		for _, a := range cfg.ListenUDP {
			k := udpKey(a)
			if _, dup := s.udp[k]; dup {
				continue
			}
			l, err := daemon.ListenUDP(a)
			if err != nil {
				closeLinks(links)
				return nil, err
			}
			links = append(links, l)
			s.udp[k] = l.Name()
		}
	}
	for spec, sc := range serials {
		l := daemon.NewSerialLink(sc, s.log)
		links = append(links, l)
		s.serial[spec] = l.Name()
	}
	for _, mc := range brokers {
		l, err := daemon.NewMQTTLink(mc, s.log)
		if err != nil {
			closeLinks(links)
			return nil, err
		}
		links = append(links, l)
	}
	s.cur = cfg
	return links, nil
}

// closeLinks releases links that were opened but never served.
func closeLinks(links []daemon.Link) {
	for _, l := range links {
		if u, ok := l.(*daemon.UDPLink); ok {
			u.Close()
		}
	}
}

// openEngine starts the engine cfg names (backend.go), with the faults of
// a test build (fault_*.go). When the GGUF file is missing or unusable it
// returns, with the problem, what serves without it (waiting.go): Ollama
// when the policy has it and it can start, else a waitingEngine.
func (s *service) openEngine(ctx context.Context, cfg config) (backends.Backend, *noModelError, error) {
	problem := modelProblem(cfg)
	if problem == nil {
		faultLoadDelay(s.log)
		b, err := openBackend(ctx, cfg, s.log, true)
		if err != nil {
			return nil, nil, err
		}
		return withFaults(b, s.log), nil, nil
	}
	if servesWithoutNative(cfg) {
		b, err := openBackend(ctx, cfg, s.log, false)
		if err == nil {
			s.log.Warn("no usable model for the in-process engine; Ollama serves until there is one",
				"path", problem.path, "reason", describeModelProblem(problem.why))
			return withFaults(b, s.log), problem, nil
		}
		s.log.Warn("Ollama cannot serve meanwhile", "err", err)
	}
	s.log.Warn("no usable model: waiting for it; devices get MODEL_NOT_FOUND until then",
		"path", problem.path, "reason", describeModelProblem(problem.why))
	return &waitingEngine{problem}, problem, nil
}

// engineOpened records what the engine in use was opened from.
func (s *service) engineOpened(key string, problem *noModelError) {
	s.engineKey, s.wait = key, newModelWait(problem)
}

// serve runs d until ctx ends (SIGTERM, SIGINT) or a link fails, and
// closes the engine after.
func (s *service) serve(ctx context.Context, d *daemon.Daemon, links []daemon.Link, resolve func() (config, error)) error {
	defer func() {
		// Run has ended every request it could; an engine that ignores
		// cancellation is closed anyway.
		close(s.exiting)
		s.retiring.Wait()
		if err := d.Backend().Close(); err != nil {
			s.log.Warn("closing the engine", "err", err)
		}
	}()
	runDone := make(chan error, 1)
	go func() { runDone <- d.Run(ctx, links...) }()
	select {
	case <-d.Started():
	case err := <-runDone:
		return err
	}
	s.daemon.Store(d)
	s.log.Info("mcpd ready", "version", version, "backend", d.Backend().Name(), "links", len(d.Links()))
	if err := s.notify.Ready(s.statusLine(d)); err != nil {
		s.log.Warn("systemd notify failed", "err", err)
	}

	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	poll := time.NewTicker(modelPollInterval)
	defer poll.Stop()
	shown := ""
	for {
		select {
		case err := <-runDone:
			return err
		case <-ctx.Done():
			d.StopAccepting() // before saying so: Run drains on its own goroutine
			st := d.Stats()
			running := st.Accepted.Load() - st.Done.Load() - st.Failed.Load() - st.Canceled.Load()
			drain := d.Config().ShutdownDrain
			s.log.Info("stopping: refusing new requests, draining", "requests", running, "drain", drain)
			if err := s.notify.Stopping(fmt.Sprintf("stopping: draining %d requests (up to %v)", running, drain)); err != nil {
				s.log.Warn("systemd notify failed", "err", err)
			}
			start := time.Now()
			err := <-runDone
			s.log.Info("drained", "took", time.Since(start).Round(time.Millisecond))
			return err
		case <-s.hup:
			if err := s.notify.Reloading("reloading configuration"); err != nil {
				s.log.Warn("systemd notify failed", "err", err)
			}
			if err := s.reload(ctx, d, resolve); err != nil {
				s.log.Error("reload rejected; the running configuration stays in force", "err", err)
			}
			shown = s.statusLine(d)
			if err := s.notify.Ready(shown); err != nil {
				s.log.Warn("systemd notify failed", "err", err)
			}
		case <-poll.C:
			s.pollModel(ctx, d) // only while waiting for a model
			if line := s.statusLine(d); line != shown {
				s.status(line)
				shown = line
			}
		case <-tick.C:
			if line := s.statusLine(d); line != shown {
				s.status(line)
				shown = line
			}
		}
	}
}

// statusLine is what `systemctl status mcpd` shows.
func (s *service) statusLine(d *daemon.Daemon) string {
	st := d.Stats()
	running := st.Accepted.Load() - st.Done.Load() - st.Failed.Load() - st.Canceled.Load()
	counts := fmt.Sprintf("%d links%s; %d sessions, %d requests; %d answered",
		len(d.Links()), linksDown(d.LinkStates()), st.Sessions.Load(), running, st.Done.Load())
	var line string
	switch _, none := d.Backend().(*waitingEngine); {
	case none && s.wait != nil:
		line = s.wait.err.waitingFor() + "; " + counts
	case s.wait != nil: // Ollama serves while the in-process engine waits
		line = fmt.Sprintf("serving: backend %s, model %s; %s; in-process engine %s",
			d.Backend().Name(), s.cur.ollamaModel(), counts, s.wait.err.waitingFor())
	default:
		line = fmt.Sprintf("serving: backend %s, model %s; %s", d.Backend().Name(), filepath.Base(s.cur.Model), counts)
	}
	if e := s.lastErr.get(); e != "" {
		line += "; last error: " + e
	}
	return line
}

// linksDown is the status line's note of the links that are down
// (" (serial:/dev/ttyAMA0 down: permission denied)"); "" when all are up.
func linksDown(states []daemon.LinkState) string {
	var down []string
	for _, l := range states {
		if !l.Up {
			down = append(down, l.Name+" down: "+l.Error)
		}
	}
	if len(down) == 0 {
		return ""
	}
	return " (" + strings.Join(down, ", ") + ")"
}

// retire closes a replaced engine once its last request is done.
func (s *service) retire(old backends.Backend, idle <-chan struct{}) {
	s.retiring.Add(1)
	go func() {
		defer s.retiring.Done()
		select {
		case <-idle:
		case <-s.exiting:
		}
		if err := old.Close(); err != nil {
			s.log.Warn("closing the replaced engine", "err", err)
		}
	}()
}

// Log formats (--log-format, log_format).
const (
	logAuto   = "auto"   // the journal's fields under systemd, logfmt otherwise
	logLogfmt = "logfmt" // key=value lines on stderr
	logJSON   = "json"   // one JSON object a line on stderr, for log shippers
)

// newLogger logs in format (auto: to the journal with fields under systemd,
// logfmt otherwise) and remembers the last error for the status line.
func newLogger(stderr io.Writer, level slog.Leveler, format string) (*slog.Logger, *lastError) {
	var h slog.Handler
	switch format {
	case logJSON:
		h = slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level})
	case logLogfmt:
		h = slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level})
	default:
		h, _ = systemd.NewLogHandler(stderr, level)
	}
	le := &lastError{}
	return slog.New(&lastErrorHandler{Handler: h, last: le}), le
}

// lastError is the most recent error logged, for STATUS=.
type lastError struct {
	mu   sync.Mutex
	text string
	at   time.Time
}

func (l *lastError) get() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.text == "" {
		return ""
	}
	return l.at.Format("15:04:05") + " " + l.text
}

type lastErrorHandler struct {
	slog.Handler
	last *lastError
}

func (h *lastErrorHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		text := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" {
				text += ": " + a.Value.String()
			}
			return true
		})
		h.last.mu.Lock()
		h.last.text, h.last.at = text, r.Time
		h.last.mu.Unlock()
	}
	return h.Handler.Handle(ctx, r)
}

func (h *lastErrorHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &lastErrorHandler{Handler: h.Handler.WithAttrs(as), last: h.last}
}

func (h *lastErrorHandler) WithGroup(name string) slog.Handler {
	return &lastErrorHandler{Handler: h.Handler.WithGroup(name), last: h.last}
}

// currentEngine is the engine the daemon uses now, for those that keep a
// backends.Backend (the HTTP endpoint, the metrics): a reload may replace
// the engine under them.
type currentEngine struct{ d *daemon.Daemon }

func (c currentEngine) Name() string { return c.d.Backend().Name() }
func (c currentEngine) Generate(ctx context.Context, req backends.Request, emit backends.Emit) (backends.Result, error) {
	return c.d.Backend().Generate(ctx, req, emit)
}
func (c currentEngine) Model(ctx context.Context, name string) (backends.ModelInfo, error) {
	return c.d.Backend().Model(ctx, name)
}
func (c currentEngine) Healthy(ctx context.Context) error { return c.d.Backend().Healthy(ctx) }

// Close is the daemon's owner's job (service.serve), not a viewer's.
func (c currentEngine) Close() error { return nil }

// Endpoints reports an Ollama engine's endpoints; none for others.
func (c currentEngine) Endpoints() []backends.EndpointStatus {
	if e, ok := c.d.Backend().(backends.EndpointReporter); ok {
		return e.Endpoints()
	}
	return nil
}
