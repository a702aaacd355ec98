package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/mcpd-project/mcpd/daemon"
	"github.com/mcpd-project/mcpd/serialproto"
)

// DefaultConfigPath is read when --config is not given and the file exists.
const DefaultConfigPath = "/etc/mcpd/mcpd.toml"

// config is everything mcpd can be told. Precedence, lowest first: the
// defaults, the TOML file, MCPD_* environment variables, command-line flags.
type config struct {
	ListenUDP []string `toml:"listen_udp"`
	Serial    []string `toml:"serial"`
	// MQTT is one entry per broker (docs/protocol.md §7.4).
	MQTT      []mqttSection `toml:"mqtt"`
	Backend   string        `toml:"backend"`
	Model     string        `toml:"model"`
	LogLevel  string        `toml:"log_level"`
	LogFormat string        `toml:"log_format"` // auto, logfmt or json
	// Fallback lists engines ("native", "ollama") tried after the
	// backend's own when it fails before the first token.
	Fallback []string      `toml:"fallback"`
	Ollama   ollamaSection `toml:"ollama"`
	Cache    cacheSection  `toml:"cache"`
	Engine   struct {
		Threads     int `toml:"threads"`
		ContextSize int `toml:"context_size"`
	} `toml:"engine"`
	// Keys maps a device id to its pre-shared signing key, 32 bytes in hex
	// (16..64 allowed). A listed device must sign. Keep the file readable
	// by mcpd only.
	Keys map[string]string `toml:"keys"`
	// SecretsMode says what to do with a config file that holds secrets
	// (device keys, an MQTT password) and that group or others may read:
	// "warn" (default) logs a warning at start, "refuse" will not start.
	SecretsMode string `toml:"secrets_mode"`
	// exposed names the config files holding secrets that others may read,
	// for the warning once the logger exists.
	exposed []string
	// HTTP is the local endpoint (docs/observability.md): host:port, or
	// "off".
	HTTP struct {
		Listen string `toml:"listen"`
		// ReadyNeedsLink: /readyz is 503 while no link is up.
		ReadyNeedsLink bool `toml:"ready_needs_link"`
		// Guard (docs/observability.md): host names and browser origins
		// besides loopback ones, and the open-connection cap.
		AllowedHosts   []string `toml:"allowed_hosts"`
		AllowedOrigins []string `toml:"allowed_origins"`
		MaxConns       int      `toml:"max_conns"`
	} `toml:"http"`
	Limits struct {
		MaxSessions    int      `toml:"max_sessions"`
		MaxConcurrent  int      `toml:"max_concurrent"`
		MaxQueue       int      `toml:"max_queue"`
		Heartbeat      duration `toml:"heartbeat"`
		RequestTimeout duration `toml:"request_timeout"`
		// Hostile peers (docs/reliability.md, cmd/mcpd/guard.go).
		PeerRate      float64 `toml:"peer_rate"`      // frames/s per UDP source address; 0: default 2000; negative: no limit
		PeerBurst     int     `toml:"peer_burst"`     // frames at once above the rate
		MaxPeers      int     `toml:"max_peers"`      // UDP sources the rate limiter tracks
		MaxPerDevice  int     `toml:"max_per_device"` // requests one device may have queued or running
		MaxReassembly int     `toml:"max_reassembly"` // fragmented messages in reassembly per device
		// Fairness (docs/reliability.md): 0 takes the default, negative: none.
		MaxPerSource         int      `toml:"max_per_source"`          // requests one source address may have queued or running
		MaxSessionsPerSource int      `toml:"max_sessions_per_source"` // sessions one source address may hold
		MaxSessionsPerDevice int      `toml:"max_sessions_per_device"` // sessions one device id may hold
		MaxTokens            int      `toml:"max_tokens"`              // cap on a request's MAX_TOKENS
		LocalShare           int      `toml:"local_share"`             // percent of the queue local HTTP applications may hold
		MaxContext           int      `toml:"max_context"`             // cap on a request's CONTEXT (tokens; Ollama's num_ctx)
		ShutdownDrain        duration `toml:"shutdown_drain"`          // SIGTERM: how long in-flight requests may finish
		EngineStall          duration `toml:"engine_stall"`            // an engine call silent this long stops the watchdog
		MinRTO               duration `toml:"min_rto"`                 // floor of the adaptive UDP RTO (protocol.md §7.2); default 10ms
		MaxHistory           int      `toml:"max_history"`             // chat messages kept per device session (default 20)
		// Device tools (protocol.md §16).
		ToolTimeout  duration `toml:"tool_timeout"`   // how long a device's tool may take once it has the call (default 5s)
		MaxToolCalls int      `toml:"max_tool_calls"` // tool calls one request may make (default 4)
		ToolChoice   string   `toml:"tool_choice"`    // "auto" (default), or "first": the in-process model must call a tool first
	} `toml:"limits"`
	Policy policyConfig `toml:"policy"`
	// Schemas are the answer constraints devices name by id
	// (docs/protocol.md §11.4.1), by name for the operator.
	Schemas map[string]schemaConfig `toml:"schemas"`
}

// mqttSection is one [[mqtt]] broker connection.
type mqttSection struct {
	URL          string `toml:"url"`           // tcp://host:1883, mqtts://host:8883
	Username     string `toml:"username"`      //
	Password     string `toml:"password"`      // or, better, password_file
	PasswordFile string `toml:"password_file"` // the password, alone in a file readable by mcpd only
	CAFile       string `toml:"ca_file"`       // PEM CAs for the broker's certificate
	CertFile     string `toml:"cert_file"`     // client certificate…
	KeyFile      string `toml:"key_file"`      // …and its key
	Group        string `toml:"group"`         // shared subscription group: instances that share devices
	Instance     string `toml:"instance"`      // client id and topic level; default mcpd-<random>
	QoS          int    `toml:"qos"`           // 0 (default) or 1
}

// daemonConfig reads the password file and checks the entry.
func (m mqttSection) daemonConfig() (daemon.MQTTConfig, error) {
	if m.QoS < 0 || m.QoS > 1 {
		return daemon.MQTTConfig{}, fmt.Errorf("mqtt %s: qos %d, want 0 or 1", m.URL, m.QoS)
	}
	c := daemon.MQTTConfig{
		URL: m.URL, Username: m.Username, Password: m.Password,
		CAFile: m.CAFile, CertFile: m.CertFile, KeyFile: m.KeyFile,
		Group: m.Group, Instance: m.Instance, QoS: byte(m.QoS),
	}
	if m.PasswordFile != "" {
		if m.Password != "" {
			return c, fmt.Errorf("mqtt %s: password and password_file both set", m.URL)
		}
		b, err := os.ReadFile(m.PasswordFile)
		if err != nil {
			return c, fmt.Errorf("mqtt password_file: %w", err)
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
	}
	return c, c.Validate()
}

// duration reads "5s", "2m" from TOML.
type duration struct{ time.Duration }

// or is d's duration, def when d is unset (nil).
func (d *duration) or(def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return d.Duration
}

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func defaultConfig() config {
	var c config
	c.Backend, c.LogLevel, c.LogFormat = "auto", "info", logAuto
	c.HTTP.Listen = "127.0.0.1:7701"
	return c
}

// loadFile merges a TOML file into c. Unknown keys are errors: a typo in a
// config nobody reads again must not be silently ignored.
func (c *config) loadFile(path string, required bool) error {
	md, err := toml.DecodeFile(path, c)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return nil
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("config %s: %w", path, err)
		}
		return friendlyTOMLError(path, err) // configcheck.go
	}
	if und := md.Undecoded(); len(und) > 0 {
		return unknownKeysError(path, und)
	}
	return c.checkSecretsMode(path)
}

// checkSecretsMode refuses (secrets_mode = "refuse") or notes for a
// warning a config file that holds device keys or an MQTT password and
// that group or others may read.
func (c *config) checkSecretsMode(path string) error {
	secret := len(c.Keys) > 0
	for _, m := range c.MQTT {
		secret = secret || m.Password != ""
	}
	if !secret {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o077 == 0 {
		return nil
	}
	switch c.SecretsMode {
	case "refuse":
		return fmt.Errorf("config %s holds secrets (device keys or a password) and its mode %04o lets group or others read it: chmod 600 %s (or 640 with group root)", path, fi.Mode().Perm(), path)
	case "", "warn":
		c.exposed = append(c.exposed, fmt.Sprintf("%s (mode %04o)", path, fi.Mode().Perm()))
		return nil
	}
	return fmt.Errorf("config %s: secrets_mode %q: want warn or refuse", path, c.SecretsMode)
}

// loadEnv applies MCPD_* variables (lists are comma-separated).
func (c *config) loadEnv(getenv func(string) string) error {
	list := func(k string, dst *[]string) {
		if v := getenv(k); v != "" {
			*dst = strings.Split(v, ",")
		}
	}
	str := func(k string, dst *string) {
		if v := getenv(k); v != "" {
			*dst = v
		}
	}
	num := func(k string, dst *int) error {
		if v := getenv(k); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("%s=%q: not a number", k, v)
			}
			*dst = n
		}
		return nil
	}
	list("MCPD_LISTEN_UDP", &c.ListenUDP)
	list("MCPD_SERIAL", &c.Serial)
	str("MCPD_BACKEND", &c.Backend)
	str("MCPD_MODEL", &c.Model)
	str("MCPD_LOG_LEVEL", &c.LogLevel)
	str("MCPD_LOG_FORMAT", &c.LogFormat)
	str("MCPD_HTTP_LISTEN", &c.HTTP.Listen)
	c.Cache.loadStateDir(getenv)
	return errors.Join(
		c.loadBackendEnv(getenv),
		num("MCPD_THREADS", &c.Engine.Threads),
		num("MCPD_MAX_CONCURRENT", &c.Limits.MaxConcurrent),
		num("MCPD_MAX_QUEUE", &c.Limits.MaxQueue),
		num("MCPD_MAX_SESSIONS", &c.Limits.MaxSessions),
	)
}

func getenvFromOS(k string) string { return os.Getenv(k) }

// deviceKeys decodes the [keys] table. Errors name the device, never the key.
func (c *config) deviceKeys() (map[string]serialproto.Key, error) {
	keys := make(map[string]serialproto.Key, len(c.Keys))
	for id, h := range c.Keys {
		if !serialproto.ValidDeviceID(id) {
			return nil, fmt.Errorf("keys: %q is not a device id", id)
		}
		b, err := hex.DecodeString(h)
		if err != nil {
			return nil, fmt.Errorf("keys: device %s: the key is not hex", id)
		}
		if keys[id], err = serialproto.NewKey(b); err != nil {
			return nil, fmt.Errorf("keys: device %s: %w", id, err)
		}
	}
	return keys, nil
}
