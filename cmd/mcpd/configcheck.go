package main

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/mcpd-project/mcpd/daemon"
)

// MarshalText writes a duration as it is read ("5s", "2m0s").
func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// knownKeys lists every key the TOML file may hold, dotted ("limits.max_queue");
// a table whose keys are free (device ids under [keys]) ends in ".*".
func knownKeys() []string {
	var keys []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() == reflect.Map {
			keys = append(keys, prefix+".*")
			return
		}
		if t.Kind() != reflect.Struct || t == reflect.TypeFor[duration]() {
			return
		}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if name == "" || name == "-" {
				continue
			}
			key := name
			if prefix != "" {
				key = prefix + "." + name
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && ft != reflect.TypeFor[duration]() || ft.Kind() == reflect.Map {
				walk(f.Type, key)
				continue
			}
			keys = append(keys, key)
		}
	}
	walk(reflect.TypeFor[config](), "")
	return keys
}

// unknownKeysError names the keys the file has that mcpd does not know,
// each with the nearest known key when one is close.
func unknownKeysError(path string, und []toml.Key) error {
	known := knownKeys()
	parts := make([]string, 0, len(und))
	for _, k := range und {
		s := k.String()
		if best := nearest(s, known); best != "" {
			s += " (did you mean " + best + "?)"
		}
		parts = append(parts, s)
	}
	return fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(parts, ", "))
}

// nearest is the known key closest to key by edit distance, if it is close
// enough to be a typo (a third of the key's last part, at least 1, at most
// 3 edits); the ".*" tables match nothing.
func nearest(key string, known []string) string {
	best, bestD := "", 0
	last := key[strings.LastIndexByte(key, '.')+1:]
	limit := min(max(len(last)/3, 1), 3)
	for _, k := range known {
		if strings.HasSuffix(k, ".*") {
			continue
		}
		d := editDistance(key, k)
		// The same name in another table ("max_queue" at the top instead
		// of under [limits]) is a likely mistake too.
		if kl := k[strings.LastIndexByte(k, '.')+1:]; kl == last && k != key {
			d = 1
		}
		if d <= limit && (best == "" || d < bestD) {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// tomlTypeErr matches the TOML decoder's type mismatch.
var tomlTypeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]+)"\): incompatible types: TOML value has type (\w+); destination has type (\w+)$`)

// friendlyTOMLError rewrites the decoder's errors in the file's terms: the
// key, its line and what it should look like.
func friendlyTOMLError(path string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		if text, rerr := os.ReadFile(path); rerr != nil || secretLine(string(text), pe.Position.Line) {
			// The line, its neighbours and the parser's message (which may
			// quote the bad value) could show a key: say where, not what.
			return fmt.Errorf("config %s line %d: not valid TOML (in [keys] or a password: the line is not shown)", path, pe.Position.Line)
		}
		return fmt.Errorf("config %s line %d: %s\n%s", path, pe.Position.Line, pe.Message, pe.ErrorWithPosition())
	}
	m := tomlTypeErr.FindStringSubmatch(err.Error())
	if m == nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	return fmt.Errorf("config %s line %s: %s must be %s, not %s%s", path, m[1], m[2], typeWord(m[4]), typeWord(m[3]), typeExample(m[2], m[4]))
}

// secretLine reports whether line n (1-based) of a TOML text, or one of
// the lines shown around it, is in the [keys] table or sets a password.
func secretLine(text string, n int) bool {
	table := ""
	for i, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "[") {
			table = strings.Trim(t, "[] \t")
		}
		if i+1 < n-3 || i+1 > n+3 {
			continue
		}
		if table == "keys" || strings.HasPrefix(table, "keys.") || strings.Contains(strings.ToLower(t), "password") || strings.HasPrefix(t, "keys") {
			return true
		}
	}
	return false
}

func typeWord(t string) string {
	switch t {
	case "slice", "array":
		return "a list"
	case "integer", "int", "int64":
		return "a whole number"
	case "float", "float64":
		return "a number"
	case "string":
		return "a quoted string"
	case "bool":
		return "true or false"
	case "map", "struct", "table":
		return "a table"
	}
	return t
}

func typeExample(key, want string) string {
	switch want {
	case "slice":
		return fmt.Sprintf(` (write %s = ["…"], a list even for one)`, key[strings.LastIndexByte(key, '.')+1:])
	case "string":
		return " (put the value in double quotes)"
	}
	return ""
}

// A range a setting must be in; 0 means "the default" where noted.
type settingRange struct {
	key, flag string
	value     int
	min, max  int
	zero      string // what 0 means, when 0 is allowed besides min..max
}

// checkRanges rejects values outside what mcpd can do, with the key, the
// flag and the allowed range — instead of quietly replacing them.
func checkRanges(cfg config) error {
	cores := runtime.NumCPU()
	ranges := []settingRange{
		{"limits.max_concurrent", "--max-concurrent", cfg.Limits.MaxConcurrent, 1, 256, "the engine's capacity"},
		{"limits.max_queue", "--max-queue", cfg.Limits.MaxQueue, -1, 65535, ""},
		{"limits.max_sessions", "--max-sessions", cfg.Limits.MaxSessions, 1, 65535, "256"},
		{"engine.threads", "--threads", cfg.Engine.Threads, 1, cores, fmt.Sprintf("all %d cores", cores)},
		{"engine.context_size", "--ctx", cfg.Engine.ContextSize, 64, 131072, "the model's, at most 2048"},
	}
	var errs []error
	for _, r := range ranges {
		if r.value == 0 && r.zero != "" || r.value >= r.min && r.value <= r.max {
			continue
		}
		allowed := fmt.Sprintf("%d..%d", r.min, r.max)
		if r.zero != "" {
			allowed = fmt.Sprintf("0 (%s) or %s", r.zero, allowed)
		}
		if r.key == "limits.max_queue" {
			allowed += " (-1: no queue)"
		}
		errs = append(errs, fmt.Errorf("%s = %d (%s): out of range, allowed %s", r.key, r.value, r.flag, allowed))
	}
	return errors.Join(errs...)
}

// writeEffective prints the configuration in force as TOML, by the file's
// key names, with the daemon's defaults filled in and secrets hidden.
func writeEffective(w io.Writer, cfg config, d daemon.Config) error {
	d = d.WithDefaults()
	// Only what the file left unset takes the daemon's default: an
	// explicit value (a negative "none" included) is shown as written.
	fill := func(v *int, def int) {
		if *v == 0 {
			*v = def
		}
	}
	fillDur := func(v *duration, def time.Duration) {
		if v.Duration == 0 {
			v.Duration = def
		}
	}
	l := &cfg.Limits
	fill(&l.MaxSessions, d.MaxSessions)
	if l.MaxQueue == 0 {
		l.MaxQueue = d.MaxQueue
	}
	fill(&l.PeerBurst, d.PeerBurst)
	fill(&l.MaxPeers, d.MaxPeers)
	fill(&l.MaxPerDevice, d.MaxPerSession)
	fill(&l.MaxReassembly, d.MaxPendingPerPeer)
	fill(&l.MaxPerSource, d.MaxPerSource)
	fill(&l.MaxSessionsPerSource, d.MaxSessionsPerSource)
	fill(&l.MaxSessionsPerDevice, d.MaxSessionsPerDevice)
	fill(&l.MaxTokens, d.MaxTokens)
	fill(&l.LocalShare, d.LocalShare)
	if l.PeerRate == 0 {
		l.PeerRate = d.PeerRate
	}
	fillDur(&l.Heartbeat, d.Heartbeat)
	fillDur(&l.RequestTimeout, d.RequestTimeout)
	fillDur(&l.ShutdownDrain, d.ShutdownDrain)
	fillDur(&l.EngineStall, d.StallTimeout)
	fillDur(&l.MinRTO, d.MinRTO)
	cfg.Cache.SaveInterval = &duration{cfg.Cache.saveInterval()}
	cfg.Cache.WarmSaveInterval = &duration{cfg.Cache.warmSaveInterval()}
	cfg.Policy.Networks = cfg.Policy.Networks[:0:0]
	for _, n := range d.Policy.Networks {
		cfg.Policy.Networks = append(cfg.Policy.Networks, n.String())
	}
	hidden := make(map[string]string, len(cfg.Keys))
	for id := range cfg.Keys {
		hidden[id] = "(hidden)"
	}
	cfg.Keys = hidden
	cfg.MQTT = slices.Clone(cfg.MQTT)
	for i := range cfg.MQTT {
		if cfg.MQTT[i].Password != "" {
			cfg.MQTT[i].Password = "(hidden)"
		}
		if u, err := url.Parse(cfg.MQTT[i].URL); err == nil && u.User != nil {
			if _, set := u.User.Password(); set {
				u.User = url.UserPassword(u.User.Username(), "hidden")
				cfg.MQTT[i].URL = u.String()
			}
		}
	}
	if cfg.Limits.MaxConcurrent == 0 {
		fmt.Fprintln(w, "# limits.max_concurrent = 0: the engine's capacity, known once it is open")
	}
	return toml.NewEncoder(w).Encode(cfg)
}
