package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	sp "github.com/mcpd-project/mcpd/serialproto"
)

// linkFlags are the flags every device command shares.
type linkFlags struct {
	udp      string
	serial   string
	baud     int
	deviceID string
	maxData  int
	window   int
	timeout  time.Duration
	key      string
}

func (l *linkFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.udp, "udp", "", "daemon's UDP address, e.g. 127.0.0.1:7700")
	fs.StringVar(&l.serial, "serial", "", "serial port the daemon listens on the other end of, e.g. /dev/ttyUSB0")
	fs.IntVar(&l.baud, "baud", 115200, "baud rate with --serial")
	fs.StringVar(&l.deviceID, "device-id", "mcpctl", "device id sent in HELLO")
	fs.IntVar(&l.maxData, "max-data", 256, "largest data field this device accepts (32..256)")
	fs.IntVar(&l.window, "window", 4, "TOKEN frames this device buffers (1..255)")
	fs.DurationVar(&l.timeout, "timeout", 2*time.Minute, "give up after this long")
	fs.StringVar(&l.key, "key", "", "this device's signing key in hex (the daemon's [keys] entry); empty: unsigned")
}

// connect opens the link and says HELLO.
func (l *linkFlags) connect(ctx context.Context) (*device.Client, func(), error) {
	var t device.Transport
	switch {
	case l.udp != "" && l.serial != "":
		return nil, nil, errors.New("give either --udp or --serial, not both")
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
		return nil, nil, errors.New("say where the daemon is: --udp ADDR or --serial PATH")
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
	if err := c.Hello(ctx); err != nil {
		t.Close()
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
		return nil, nil, nil, nil, err
	}
	return ctx, cancel, c, closeFn, nil
}

// protocolExit makes a daemon ERROR the process's exit status: the
// protocol's error code (docs/protocol.md §12).
type protocolExit struct{ e *sp.Error }

func (p protocolExit) Error() string { return "daemon answered ERROR " + p.e.Error() }
func (p protocolExit) ExitCode() int { return int(p.e.Code) }

func asExit(err error) error {
	var e *sp.Error
	if errors.As(err, &e) {
		return protocolExit{e}
	}
	return err
}

func runAsk(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ask", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mcpctl ask (--udp ADDR | --serial PATH [--baud N]) [flags] PROMPT\n\nSends PROMPT as a device would, writes the answer to stdout as it streams\nand the statistics to stderr. Exits 0 on DONE, with the protocol's error\ncode on ERROR (6 = BUSY, 9 = MODEL_NOT_FOUND, ...; docs/protocol.md §12),\nand 1 on other failures.\n\nFlags:")
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errors.New("ask wants exactly one PROMPT argument (quote it)")
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
	ctx, cancel, c, closeFn, err := l.session(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer closeFn()
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
		return asExit(err)
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
	var l linkFlags
	l.register(fs)
	count := fs.Int("n", 5, "pings to send")
	if err := fs.Parse(args); err != nil {
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
			return asExit(err)
		}
		fmt.Fprintf(stdout, "PONG %d: %v\n", i+1, rtt.Round(time.Microsecond))
	}
	return nil
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var l linkFlags
	l.register(fs)
	if err := fs.Parse(args); err != nil {
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
		return asExit(err)
	}
	states := []string{"ready", "loading", "degraded", "unavailable", "draining"}
	state := fmt.Sprintf("state %d", st.State)
	if int(st.State) < len(states) {
		state = states[st.State]
	}
	fmt.Fprintf(stdout, "%s: backend %s, model %s, load %d%%, %d queued\n", state, st.Backend, st.Model, st.LoadPct, st.Queue)
	return nil
}
