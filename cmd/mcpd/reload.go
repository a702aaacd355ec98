package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/daemon/httpapi"
)

// prepared is a configuration checked as far as it can be without opening
// anything: what start-up and a reload both need before touching the
// running daemon.
type prepared struct {
	daemon  daemon.Config
	serials map[string]daemon.SerialConfig // by the spec in the config
	mqtt    []daemon.MQTTConfig
	level   slog.Level
}

func prepare(cfg config) (prepared, error) {
	var p prepared
	if err := p.level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		return p, fmt.Errorf("log_level %q: want debug, info, warn or error", cfg.LogLevel)
	}
	switch cfg.LogFormat {
	case logAuto, logLogfmt, logJSON:
	default:
		return p, fmt.Errorf("log_format %q: want auto, logfmt or json", cfg.LogFormat)
	}
	if err := checkRanges(cfg); err != nil {
		return p, err
	}
	keys, err := cfg.deviceKeys()
	if err != nil {
		return p, err
	}
	p.daemon = daemon.Config{
		Keys:          keys,
		MaxConcurrent: cfg.Limits.MaxConcurrent, MaxQueue: cfg.Limits.MaxQueue, MaxSessions: cfg.Limits.MaxSessions,
		Heartbeat: cfg.Limits.Heartbeat.Duration, RequestTimeout: cfg.Limits.RequestTimeout.Duration,
		ShutdownDrain: cfg.Limits.ShutdownDrain.Duration, StallTimeout: cfg.Limits.EngineStall.Duration,
		MinRTO:     cfg.Limits.MinRTO.Duration,
		MaxHistory: cfg.Limits.MaxHistory,
		ChatFile:   cfg.Cache.chatFile(), ChatModel: chatModel(cfg), ChatBudget: cfg.Cache.warmBudget(),
		SaveInterval: cfg.Cache.saveInterval(), WarmSaveInterval: cfg.Cache.warmSaveInterval(), ResumeUnsigned: cfg.Cache.ResumeUnsigned,
		ToolTimeout: cfg.Limits.ToolTimeout.Duration, MaxToolCalls: cfg.Limits.MaxToolCalls, ToolChoice: cfg.Limits.ToolChoice,
	}
	if err := cfg.applyGuard(&p.daemon); err != nil {
		return p, err
	}
	if p.daemon.Schemas, err = cfg.schemas(); err != nil {
		return p, err
	}
	p.serials = make(map[string]daemon.SerialConfig, len(cfg.Serial))
	for _, s := range cfg.Serial {
		sc, err := daemon.ParseSerial(s)
		if err != nil {
			return p, err
		}
		p.serials[s] = sc
	}
	for _, m := range cfg.MQTT {
		mc, err := m.daemonConfig()
		if err != nil {
			return p, err
		}
		p.mqtt = append(p.mqtt, mc)
	}
	if err := p.daemon.WithDefaults().Validate(); err != nil {
		return p, err
	}
	if _, _, err := httpapi.ParseAddr(cfg.HTTP.Listen); err != nil {
		return p, err
	}
	if err := checkBackend(cfg); err != nil {
		return p, err
	}
	return p, nil
}

// engineSettings is what, when it changes, needs a new engine: the
// backend and its fallbacks, the [ollama] section, the model (its file
// replaced in place, appearing or going counts: fileState), threads,
// context, and the number of parallel sequences. The service keeps the
// value it had when the engine in use was opened (engineKey): comparing
// two configurations' values now would stat the same file twice and miss
// a replaced model.
func engineSettings(cfg config) string {
	// The daemon's own cache settings (how often to save, who may resume)
	// need no new engine: a reload that changes them keeps it.
	cache := cfg.Cache
	cache.SaveInterval, cache.WarmSaveInterval, cache.ResumeUnsigned = nil, nil, false
	return fmt.Sprintf("%s|%q|%+v|%s|%d|%d|%d|%+v|%s", cfg.Backend, cfg.Fallback, cfg.Ollama, cfg.Model,
		cfg.Engine.Threads, cfg.Engine.ContextSize, cfg.Limits.MaxConcurrent, cache, fileState(cfg.Model))
}

// udpKey names a listen address by what it resolves to, so that
// "localhost:7700" and "127.0.0.1:7700" are the same socket.
func udpKey(addr string) string {
	if a, err := net.ResolveUDPAddr("udp", addr); err == nil {
		return a.String()
	}
	return addr
}

// reload re-reads the configuration and applies it to the running daemon:
// links added and removed (sessions on links that stay are untouched), new
// limits and keys, a new engine when its settings changed. Everything that
// can fail — parsing, binding new sockets, loading a model — happens before
// the first change, so a rejected configuration leaves the running one
// fully in force.
func (s *service) reload(ctx context.Context, d *daemon.Daemon, resolve func() (config, error)) error {
	cfg, err := resolve()
	if err != nil {
		return err
	}
	return s.apply(ctx, d, cfg)
}

// apply puts cfg in force in the running daemon (see reload). While the
// in-process engine waits for its model, a configuration whose model is
// still unusable is applied and the wait goes on; once an engine serves, a
// configuration with an unusable model is refused and the engine stays.
func (s *service) apply(ctx context.Context, d *daemon.Daemon, cfg config) error {
	p, err := prepare(cfg)
	if err != nil {
		return err
	}

	// New UDP sockets, bound now (an address in use rejects the reload).
	// With socket activation the socket unit owns the UDP addresses.
	wantUDP := map[string]bool{}
	newUDP := map[string]*daemon.UDPLink{} // by udpKey of the configured address
	closeNew := func() {
		for _, l := range newUDP {
			closeLinks([]daemon.Link{l})
		}
	}
	if !s.activated {
		for _, a := range cfg.ListenUDP {
			k := udpKey(a)
			if wantUDP[k] {
				continue
			}
			wantUDP[k] = true
			if _, ok := s.udp[k]; ok {
				continue
			}
			l, err := daemon.ListenUDP(a)
			if err != nil {
				closeNew()
				return err
			}
			newUDP[k] = l
		}
	}

	// The engine's warm cache goes to disk now (docs/caching.md): a new
	// engine opened below starts from it, and the running one's caches
	// survive a crash after the reload.
	if w, ok := d.Backend().(backends.WarmSaver); ok {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := w.SaveWarm(sctx); err != nil {
			s.log.Warn("reload: the warm cache was not saved", "err", err)
		}
		cancel()
	}
	d.SaveChats() // logs its own failure
	key := engineSettings(cfg)
	reloadEngine := key != s.engineKey
	var (
		engine  backends.Backend
		problem *noModelError
	)
	if reloadEngine {
		s.status("reloading: loading model " + cfg.Model)
		if engine, problem, err = s.openEngine(ctx, cfg); err != nil {
			closeNew()
			return fmt.Errorf("new engine: %w", err)
		}
		if problem != nil && s.wait == nil {
			engine.Close()
			closeNew()
			return fmt.Errorf("new engine: model: %w", problem.why)
		}
	}

	// From here on, nothing is refused: the new configuration goes in.
	if engine != nil {
		followCapacity(&p.daemon, engine, s.log)
	} else {
		followCapacity(&p.daemon, d.Backend(), s.log)
	}
	if err := d.Reconfigure(p.daemon); err != nil { // checked by prepare; kept for safety
		closeNew()
		if engine != nil {
			engine.Close()
		}
		return err
	}
	s.level.Set(p.level)
	if engine != nil {
		old, idle, err := d.SwapBackend(engine)
		if err != nil {
			return err
		}
		s.retire(old, idle)
		s.engineOpened(key, problem)
	}

	var errs []error
	rmctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var removed, added []string
	if !s.activated {
		for k, name := range s.udp {
			if !wantUDP[k] {
				errs = append(errs, d.RemoveLink(rmctx, name))
				delete(s.udp, k)
				removed = append(removed, name)
			}
		}
	}
	// A serial spec whose baud or framing changed is a removal and an
	// addition of the same port.
	for spec, name := range s.serial {
		if _, keep := p.serials[spec]; !keep {
			errs = append(errs, d.RemoveLink(rmctx, name))
			delete(s.serial, spec)
			removed = append(removed, name)
		}
	}
	for k, l := range newUDP {
		if err := d.AddLink(l); err != nil {
			closeLinks([]daemon.Link{l})
			errs = append(errs, err)
			continue
		}
		s.udp[k] = l.Name()
		added = append(added, l.Name())
	}
	for spec, sc := range p.serials {
		if _, have := s.serial[spec]; have {
			continue
		}
		l := daemon.NewSerialLink(sc, s.log)
		if err := d.AddLink(l); err != nil {
			errs = append(errs, err)
			continue
		}
		s.serial[spec] = l.Name()
		added = append(added, l.Name())
	}
	if !slices.Equal(cfg.MQTT, s.cur.MQTT) {
		s.log.Warn("the mqtt links' settings take effect at the next restart")
		cfg.MQTT = s.cur.MQTT
	}
	if !reflect.DeepEqual(cfg.HTTP, s.cur.HTTP) {
		s.log.Warn("the http endpoint's settings take effect at the next restart", "listen", s.cur.HTTP.Listen)
		cfg.HTTP = s.cur.HTTP
	}
	if cfg.LogFormat != s.cur.LogFormat {
		s.log.Warn("log_format takes effect at the next restart", "log_format", s.cur.LogFormat)
		cfg.LogFormat = s.cur.LogFormat
	}
	s.cur = cfg
	slices.Sort(added)
	slices.Sort(removed)
	s.log.Info("configuration reloaded", "links_added", strings.Join(added, ","), "links_removed", strings.Join(removed, ","),
		"engine_reloaded", reloadEngine, "links", len(d.Links()))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reload applied, with link errors: %w", err)
	}
	return nil
}
