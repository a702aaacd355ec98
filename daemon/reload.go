package daemon

// Changing a running daemon (a service reload): new limits and keys
// (here), a new engine (engine.go), links added and removed (links.go) —
// without dropping the sessions that the change does not concern.

// conf is the configuration in force now. Read it once per decision: a
// reload may replace it between two calls.
func (d *Daemon) conf() *Config { return d.cfg.Load() }

// Config returns the configuration in force, defaults applied.
func (d *Daemon) Config() Config { return *d.conf() }

// Reconfigure puts cfg in force. Requests already accepted keep the limits
// they started under (their deadline, their engine slot); new ones get the
// new limits. A HELLO is judged by the new keys, and a device whose key was
// added, changed or removed has its session closed: it must sign (or stop
// signing) from its next HELLO on. Sessions above a lowered MaxSessions stay
// until they end; only new ones are refused.
func (d *Daemon) Reconfigure(cfg Config) error {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	old := d.cfg.Swap(&cfg)
	if cfg.MaxConcurrent != old.MaxConcurrent {
		d.admission.resize(cfg.MaxConcurrent)
	}
	if cfg.SaveInterval != old.SaveInterval || cfg.WarmSaveInterval != old.WarmSaveInterval {
		select { // the saver may be waiting out the old interval
		case d.saveWake <- struct{}{}:
		default: // a wake is pending already
		}
	}
	rekeyed := d.sessions.filter(func(s *session) bool {
		was, had := old.Keys[s.deviceID]
		now, has := cfg.Keys[s.deviceID]
		return had != has || (has && !was.Equal(now))
	})
	for _, s := range rekeyed {
		d.log.Info("session closed: the device's key changed", "device", s.deviceID)
		s.close(errSessionClosed)
	}
	return nil
}
