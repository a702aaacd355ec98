package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// linkFlags are the flags every device command shares.
type linkFlags struct {
	udp       string
	serial    string
	mqtt      string
	mqttUser  string
	mqttPass  string // file
	baud      int
	deviceID  string
	maxData   int
	window    int
	timeout   time.Duration
	helloWait time.Duration
	key       string
}

func (l *linkFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.udp, "udp", "", "daemon's UDP address (default "+DefaultTarget+" unless --serial is given)")
	fs.StringVar(&l.serial, "serial", "", "serial port the daemon listens on the other end of, e.g. /dev/ttyUSB0")
	fs.StringVar(&l.mqtt, "mqtt", "", "MQTT broker the daemon serves, e.g. tcp://[user:password@]127.0.0.1:1883 (docs/protocol.md §7.4)")
	fs.StringVar(&l.mqttUser, "mqtt-user", "", "MQTT username with --mqtt (default: the URL's, else the device id)")
	fs.StringVar(&l.mqttPass, "mqtt-password-file", "", "file holding the MQTT password with --mqtt")
	fs.IntVar(&l.baud, "baud", 115200, "baud rate with --serial")
	fs.StringVar(&l.deviceID, "device-id", "mcpctl", "device id sent in HELLO")
	fs.IntVar(&l.maxData, "max-data", 256, "largest data field this device accepts (32..256)")
	fs.IntVar(&l.window, "window", 4, "TOKEN frames this device buffers (1..255)")
	fs.DurationVar(&l.timeout, "timeout", 2*time.Minute, "give up after this long")
	fs.DurationVar(&l.helloWait, "connect-timeout", 2*time.Second, "how long to wait for mcpd's answer to HELLO")
	fs.StringVar(&l.key, "key", "", "this device's signing key in hex (the daemon's [keys] entry); empty: unsigned")
}

// connect opens the link and says HELLO.
func (l *linkFlags) connect(ctx context.Context) (*device.Client, func(), error) {
	var t device.Transport
	switch {
	case (l.udp != "") && (l.serial != "") || (l.udp != "" || l.serial != "") && l.mqtt != "":
		return nil, nil, errors.New("give one of --udp, --serial, --mqtt")
	case l.mqtt != "":
		m, err := dialMQTT(ctx, l.mqtt, l.deviceID, l.mqttUser, l.mqttPass)
		if err != nil {
			return nil, nil, err
		}
		t = m
	case l.udp != "":
		u, err := device.DialUDP(l.udp)
		if err != nil {
			return nil, nil, err
		}
		t = u
	case l.serial != "":
		s, err := device.OpenSerial(l.serial, l.baud)
		if err != nil {
			return nil, nil, err
		}
		t = s
	default:
		l.udp = DefaultTarget
		u, err := device.DialUDP(l.udp)
		if err != nil {
			return nil, nil, err
		}
		t = u
	}
	if l.maxData < sp.MinDataLimit || l.maxData > sp.MaxData || l.window < 1 || l.window > 255 {
		t.Close()
		return nil, nil, fmt.Errorf("--max-data must be %d..%d and --window 1..255", sp.MinDataLimit, sp.MaxData)
	}
	rto := 250 * time.Millisecond
	if l.serial != "" {
		rto = device.SerialRTO(l.baud, uint8(l.window)) // §7.1
	}
	var key sp.Key
	if l.key != "" {
		b, err := hex.DecodeString(l.key)
		if err == nil {
			key, err = sp.NewKey(b)
		}
		if err != nil {
			t.Close()
			return nil, nil, fmt.Errorf("--key: want 16..64 bytes in hex")
		}
	}
	c := device.New(t, device.Config{DeviceID: l.deviceID, MaxData: uint16(l.maxData), Window: uint8(l.window), RTO: rto, Key: key})
	hctx, cancel := context.WithTimeout(ctx, l.helloWait)
	defer cancel()
	if err := c.Hello(hctx); err != nil {
		t.Close()
		var perr *sp.Error
		switch {
		case errors.As(err, &perr):
			return nil, nil, err
		case ctx.Err() != nil:
			return nil, nil, ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if l.serial != "" {
				return nil, nil, unreachable{addr: l.serial, wait: l.helloWait, serial: true}
			}
			if l.mqtt != "" {
				return nil, nil, unreachable{addr: redactURL(l.mqtt), wait: l.helloWait}
			}
			return nil, nil, unreachable{addr: l.udp, wait: l.helloWait}
		}
		return nil, nil, fmt.Errorf("HELLO: %w", err)
	}
	return c, func() { _ = c.Bye(ctx); t.Close() }, nil
}

// session applies --timeout to ctx and connects; callers defer both
// returned functions (cancel first registered, so it runs last).
func (l *linkFlags) session(ctx context.Context) (context.Context, context.CancelFunc, *device.Client, func(), error) {
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	c, closeFn, err := l.connect(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, asExit(ctx, err)
	}
	return ctx, cancel, c, closeFn, nil
}

func runAsk(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ask", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl ask [--udp ADDR | --serial PATH [--baud N] | --mqtt URL] [flags] PROMPT\n\nSends PROMPT as a device would (default target "+DefaultTarget+"), writes the\nanswer to stdout as it streams and the statistics to stderr. Exits 0 on\nDONE, with the protocol's error code on ERROR (6 = BUSY, 9 = MODEL_NOT_FOUND,\n...; docs/protocol.md §12), 130 on Ctrl-C (after telling mcpd to CANCEL),\nand 1 on other failures.\n\nFlags:")
		fs.PrintDefaults()
	}
	var l linkFlags
	l.register(fs)
	model := fs.String("model", "", "model name (default: the daemon's)")
	maxTokens := fs.Int("max-tokens", 0, "tokens to generate at most (default: the daemon's)")
	temperature := fs.Float64("temperature", -1, "sampling temperature; 0 = greedy (default: the daemon's)")
	seed := fs.Int64("seed", -1, "sampler seed for reproducible output")
	system := fs.String("system", "", "system prompt")
	newChat := fs.Bool("new-chat", false, "forget the conversation so far")
	schemaID := fs.Int("schema", 0, "answer as JSON of the daemon's schema with this id, 1..255 (docs/protocol.md §11.4.1)")
	schemaJSON := fs.String("schema-json", "", "answer as JSON of this inline JSON Schema (at most 253 bytes)")
	var tf toolFlags
	fs.Var(pairFlag{&tf.cmds, &tf.order}, "tool", "a tool `NAME=CMD` the model may call, run as sh -c CMD with the arguments (JSON) on stdin and in $MCPD_TOOL_ARGS; its stdout is the result (repeatable; docs/protocol.md §16)")
	fs.Var(pairFlag{&tf.descs, nil}, "tool-desc", "`NAME=TEXT`, what the model reads about tool NAME (one line)")
	fs.Var(pairFlag{&tf.schemas, nil}, "tool-schema", "`NAME=JSON`, the JSON Schema (type object) of tool NAME's arguments; none: no arguments")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("ask wants exactly one PROMPT argument (quote it)")
	}
	if *schemaID < 0 || *schemaID > 255 {
		fs.Usage()
		return flagError{fmt.Errorf("--schema %d: want 1..255", *schemaID)}
	}
	m := &sp.Infer{Prompt: fs.Arg(0), Model: *model, System: *system}
	if *model != "" {
		m.Set = m.Set.With(sp.OptModel)
	}
	if *system != "" {
		m.Set = m.Set.With(sp.OptSystem)
	}
	if *maxTokens > 0 {
		m.Set, m.MaxTokens = m.Set.With(sp.OptMaxTokens), uint16(min(*maxTokens, 65535))
	}
	if *temperature >= 0 {
		m.Set, m.Temperature = m.Set.With(sp.OptTemperature), uint16(min(*temperature*1000, 65535))
	}
	if *seed >= 0 {
		m.Set, m.Seed = m.Set.With(sp.OptSeed), uint32(*seed)
	}
	if *newChat {
		m.Set = m.Set.With(sp.OptNewChat)
	}
	if *schemaID > 0 {
		m.Set, m.SchemaID = m.Set.With(sp.OptSchema), uint8(*schemaID)
	}
	if *schemaJSON != "" {
		m.Set, m.SchemaJSON = m.Set.With(sp.OptSchemaJSON), *schemaJSON
	}
	tools, err := tf.tools(stderr)
	if err != nil {
		fs.Usage()
		return flagError{err}
	}
	ctx, cancel, c, closeFn, err := l.session(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer closeFn()
	if len(tools) > 0 {
		if err := c.DeclareTools(ctx, tools); err != nil {
			return asExit(ctx, err)
		}
		m.Set = m.Set.With(sp.OptToolsOn)
	}
	start := time.Now()
	var first time.Duration
	done, err := c.Ask(ctx, m, func(b []byte) error {
		if first == 0 {
			first = time.Since(start)
		}
		_, err := stdout.Write(b)
		return err
	})
	fmt.Fprintln(stdout)
	if err != nil {
		return asExit(ctx, err)
	}
	el := time.Since(start)
	fmt.Fprintf(stderr, "done: %d tokens (%s), prompt %d tokens, first token %v (daemon: %d ms), total %v, %.1f tokens/s, %d bytes, CRC-32C %08x ok\n",
		done.Tokens, stopName(done.Reason), done.PromptTokens, first.Round(time.Millisecond), done.TTFTMS, el.Round(time.Millisecond),
		float64(done.Tokens)/el.Seconds(), done.TextBytes, done.TextCRC32C)
	return nil
}

func stopName(r uint8) string {
	switch r {
	case sp.StopLength:
		return "max tokens"
	case sp.StopContext:
		return "context full"
	}
	return "end of answer"
}

func runPing(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describeCommand(fs, stderr, "[--udp ADDR | --serial PATH] [-n N]", `Says HELLO as a device, then measures N PING round trips to mcpd
(default target `+DefaultTarget+`). Exits 0 when every PING was answered.`)
	var l linkFlags
	l.register(fs)
	count := fs.Int("n", 5, "pings to send")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel, c, closeFn, err := l.session(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer closeFn()
	for i := range *count {
		rtt, err := c.Ping(ctx)
		if err != nil {
			return asExit(ctx, err)
		}
		fmt.Fprintf(stdout, "PONG %d: %v\n", i+1, rtt.Round(time.Microsecond))
	}
	return nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	describeCommand(fs, stderr, "[--udp ADDR | --serial PATH]", `Asks mcpd for its STATUS as a device does: state, engine, model, load,
queue (default target `+DefaultTarget+`) and, from a daemon that sends
them, its caches' hits, misses, evictions and bytes. Exits 0 when mcpd is
ready (or degraded: serving on a fallback), 1 when it is loading,
unavailable or draining — usable in scripts and health checks.`)
	var l linkFlags
	l.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel, c, closeFn, err := l.session(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer closeFn()
	st, err := c.Status(ctx)
	if err != nil {
		return asExit(ctx, err)
	}
	state := stateName(st.State)
	model := st.Model
	if model == "" {
		model = "none loaded"
	}
	fmt.Fprintf(stdout, "%s: backend %s, model %s, load %d%%, %d queued\n", state, st.Backend, model, st.LoadPct, st.Queue)
	// The extended reply's cache figures (protocol.md §11.11), when the
	// daemon sends them and has the cache.
	for _, c := range []struct {
		name string
		f    *sp.CacheFigures
	}{{"kv cache", st.KV}, {"response cache", st.Responses}} {
		if c.f != nil {
			fmt.Fprintf(stdout, "%s: %s\n", c.name, cacheLine(c.f))
		}
	}
	if st.State != sp.StateReady && st.State != sp.StateDegraded {
		return notReady{state}
	}
	return nil
}

// cacheLine is one cache's figures as status and decode print them.
func cacheLine(f *sp.CacheFigures) string {
	return fmt.Sprintf("%d hits, %d misses, %d evictions, %d bytes held", f.Hits, f.Misses, f.Evictions, f.Bytes)
}

func stateName(s uint8) string {
	states := []string{"ready", "loading", "degraded", "unavailable", "draining"}
	if int(s) < len(states) {
		return states[s]
	}
	return fmt.Sprintf("state %d", s)
}

// notReady is status's answer when mcpd does not serve.
type notReady struct{ state string }

func (n notReady) Error() string { return "mcpd is not ready: " + n.state }
func (notReady) ExitCode() int   { return 1 }

// dialMQTT connects device id through the broker at url; the username
// defaults to the URL's, then to the device id (one broker account per
// device, as the broker's ACL expects).
func dialMQTT(ctx context.Context, url, id, user, passwordFile string) (*device.MQTT, error) {
	cfg := device.MQTTConfig{URL: url, DeviceID: id, Username: user}
	if passwordFile != "" {
		b, err := os.ReadFile(passwordFile)
		if err != nil {
			return nil, fmt.Errorf("--mqtt-password-file: %w", err)
		}
		cfg.Password = strings.TrimRight(string(b), "\r\n")
		if cfg.Username == "" {
			cfg.Username = id
		}
	}
	return device.DialMQTT(ctx, cfg)
}
