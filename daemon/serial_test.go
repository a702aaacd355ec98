package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/internal/impair"
	"github.com/mcpd-project/mcpd/serialproto"
	"go.bug.st/serial"
)

// openPty returns a pseudo-terminal pair with the terminal side raw, as a
// UART is: no echo, no line editing. The daemon opens the terminal side by
// its path through go.bug.st/serial; the test's device uses the master.
func openPty(t *testing.T) (master *os.File, ttyPath string) {
	t.Helper()
	m, tty, err := pty.Open()
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := device.MakeRaw(tty); err != nil {
		t.Fatal(err)
	}
	// Keep our terminal fd open for the test's life: with no terminal fd
	// open, reading the master fails with EIO (a pty "hangup").
	t.Cleanup(func() { tty.Close() })
	return m, tty.Name()
}

func startSerialDaemon(t *testing.T, cfg Config, e backends.Backend, path string) *Daemon {
	t.Helper()
	log := testLogger()
	d, err := New(cfg, e, log)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ParseSerial(path + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	runLinks(t, d, NewSerialLink(sc, log))
	return d
}

func TestAskOverPty(t *testing.T) {
	master, path := openPty(t)
	e := &testEngine{}
	startSerialDaemon(t, Config{DefaultMaxTokens: 1000}, e, path)
	tr := device.NewStream(master)
	defer tr.Close()
	// Line noise before the device speaks: the daemon's decoder resyncs.
	_, _ = master.Write([]byte{0x00, 0x55, 0xFF, 0x13, 0x55, 0x01})
	c := device.New(tr, device.Config{DeviceID: "uart-dev", MaxData: 64, Window: 2, RTO: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	prompt := "Soil 31 %, air 24.5 °C 🌱 " + strings.Repeat("reading ", 60)
	var text strings.Builder
	if _, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { text.Write(b); return nil }); err != nil {
		t.Fatal(err)
	}
	if text.String() != answerFor(prompt) {
		t.Fatalf("answer %q", text.String())
	}
}

func TestParseSerial(t *testing.T) {
	for _, tc := range []struct {
		spec    string
		ok      bool
		baud    int
		databit int
	}{
		{"/dev/ttyUSB0", true, 115200, 8},
		{"/dev/ttyACM*:9600", true, 9600, 8},
		{"/dev/ttyS1:19200:7E2", true, 19200, 7},
		{"/dev/ttyS1:fast", false, 0, 0},
		{"/dev/ttyS1:9600:9Q1", false, 0, 0},
		{":9600", false, 0, 0},
		{"/dev/tty[:9600", false, 0, 0},
	} {
		c, err := ParseSerial(tc.spec)
		if (err == nil) != tc.ok || (tc.ok && (c.Baud != tc.baud || c.DataBits != tc.databit)) {
			t.Errorf("%q: %+v, %v", tc.spec, c, err)
		}
	}
}

// TestUnplugMidStream pulls the cable in the middle of an answer and plugs
// it back: the port is reopened, the session survives, retransmission
// fills the gap, and the device gets the exact answer.
func TestUnplugMidStream(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "ttyMCU") // like a udev /dev/serial/by-id link
	master, path := openPty(t)
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	e := &testEngine{delay: 10 * time.Millisecond}
	d := startSerialDaemon(t, Config{DefaultMaxTokens: 1000}, e, link)
	rt := device.NewReplug(device.NewStream(master))
	c := device.New(rt, device.Config{DeviceID: "unplugged", MaxData: 48, Window: 2, RTO: 200 * time.Millisecond, Retries: 30})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	prompt := strings.Repeat("measure ", 80)
	var text strings.Builder
	var once sync.Once
	_, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error {
		text.Write(b)
		once.Do(func() {
			go func() { // unplug, wait, plug a new pty in at the same link
				if err := rt.ReplugAt(link, 300*time.Millisecond, func() (io.ReadWriteCloser, string) { return openPty(t) }); err != nil {
					t.Error(err)
				}
			}()
		})
		return nil
	})
	if err != nil {
		t.Fatalf("after the replug: %v", err)
	}
	if text.String() != answerFor(prompt) {
		t.Fatalf("answer differs after the replug:\n%q", text.String())
	}
	if e.calls.Load() != 1 || d.Stats().Sessions.Load() != 1 {
		t.Fatalf("engine calls %d, sessions %d", e.calls.Load(), d.Stats().Sessions.Load())
	}
}

// TestNoisyPacedUART runs requests over a UART paced at 115200 baud that
// flips bits at a 1e-3 error rate: the resync rule, NACK BAD_FRAME and
// retransmission must deliver every answer exactly — or, for the rare frame
// whose corruption the CRC-8 misses, the device's CRC-32C check must catch
// it. Nothing may be silently wrong.
func TestNoisyPacedUART(t *testing.T) {
	if testing.Short() {
		t.Skip("paced serial line: slow")
	}
	e := &testEngine{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, c, line := noisyUART(ctx, t, Config{DefaultMaxTokens: 1000}, e, 42, "noisy")
	exact, caught := 0, 0
	for i := range 6 {
		prompt := fmt.Sprintf("reading %d: ", i) + strings.Repeat("soil 31 % air 24.5 C ", 8)
		var text strings.Builder
		t0 := time.Now()
		_, err := c.Ask(ctx, &serialproto.Infer{Prompt: prompt}, func(b []byte) error { text.Write(b); return nil })
		t.Logf("request %d: %v, %v", i, time.Since(t0).Round(time.Millisecond), err)
		switch {
		case err == nil && text.String() == answerFor(prompt):
			exact++
		case errors.Is(err, device.ErrChecksum):
			caught++ // a corruption the frame CRC missed, caught end to end
		case err == nil:
			t.Fatalf("request %d: DONE with a wrong answer and a matching checksum:\n%q", i, text.String())
		default:
			t.Fatalf("request %d: %v", i, err)
		}
	}
	st := d.Stats()
	toDevice, toDaemon := line.Stats()
	t.Logf("6 requests over a 115200-baud line with BER 1e-3: %d exact, %d caught by CRC-32C; daemon saw %d bad frames; bits flipped %d/%d bytes to the device, %d/%d to the daemon",
		exact, caught, st.BadFrames.Load(), toDevice.FlippedBits, toDevice.Bytes, toDaemon.FlippedBits, toDaemon.Bytes)
	if exact < 4 {
		t.Fatalf("only %d of 6 answers exact", exact)
	}
}

var berForTest = 1e-3

// noisyUART runs a daemon with engine e on one side of a 115,200-baud line
// between two real ptys that flips bits at berForTest (seeded), and says
// HELLO from a device with id on the other side, through a real serial
// port (go.bug.st/serial).
func noisyUART(ctx context.Context, t *testing.T, cfg Config, e backends.Backend, seed uint64, id string) (*Daemon, *device.Client, *impair.Line) {
	t.Helper()
	daemonSide, daemonPath := openPty(t)
	deviceSide, devicePath := openPty(t)
	d := startSerialDaemon(t, cfg, e, daemonPath)
	line, err := impair.StartLine(ctx, daemonSide, deviceSide, impair.LineConfig{Baud: 115200, BitErrorRate: berForTest, Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	port, err := serial.Open(devicePath, &serial.Mode{BaudRate: 115200})
	if err != nil {
		t.Fatal(err)
	}
	_ = port.SetReadTimeout(20 * time.Millisecond)
	tr := device.NewStream(port)
	t.Cleanup(func() { tr.Close() })
	c := device.New(tr, device.Config{DeviceID: id, MaxData: 128, Window: 2, RTO: 300 * time.Millisecond, Retries: 20})
	if err := c.Hello(ctx); err != nil {
		t.Fatal(err)
	}
	return d, c, line
}

// TestSerialRTOUsesTheDevicesWindow: protocol.md §7.1's examples, with the
// window the device announced — not a fixed one, and never the WELCOME's
// reserved 255.
func TestSerialRTOUsesTheDevicesWindow(t *testing.T) {
	for _, tc := range []struct {
		baud, window int
		want         time.Duration
	}{
		{115200, 4, 283 * time.Millisecond},
		{9600, 1, 648 * time.Millisecond},
		{115200, 1, 146 * time.Millisecond},
	} {
		p := &serialPeer{baud: tc.baud}
		if got := p.RTO(tc.window).Round(time.Millisecond); got != tc.want {
			t.Errorf("%d baud, window %d: RTO %v, want %v", tc.baud, tc.window, got, tc.want)
		}
	}
}

// TestCorruptFramesKeepSerialSessionAlive is TestNoisyPacedUART's flake
// made deterministic: a device retrying a long INFER over a noisy line
// whose every copy fails the CRC-8 for longer than three heartbeats. The
// daemon sees that device's own frames, corrupt, on its port, so the
// session must live (§10): before, it expired and the first copy that got
// through was answered NO_SESSION. Then the control: a port that goes
// quiet still expires. The daemon runs on a fake clock; only the bytes on
// the pty are real.
func TestCorruptFramesKeepSerialSessionAlive(t *testing.T) {
	const heartbeat = time.Second
	master, path := openPty(t)
	clk := newFakeClock()
	d, err := newDaemon(Config{Heartbeat: heartbeat}, &testEngine{}, testLogger(), clk)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ParseSerial(path + ":115200")
	if err != nil {
		t.Fatal(err)
	}
	runLinks(t, d, NewSerialLink(sc, testLogger()))
	tr := device.NewStream(master)
	defer tr.Close()
	c := device.New(tr, device.Config{DeviceID: "noisy", MaxData: 128, Window: 2, RTO: 200 * time.Millisecond, Retries: 5})
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	if err := c.Hello(hctx); err != nil {
		t.Fatal(err)
	}

	// The INFER of TestNoisyPacedUART's requests as the device sends it
	// (one fragment of 186 bytes, a 193-byte frame), with one bit of its
	// prompt flipped: the CRC-8 rejects it, as it did four times in five
	// on that line.
	body, err := (&serialproto.Infer{Prompt: "reading 5: " + strings.Repeat("soil 31 % air 24.5 C ", 8)}).AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	pieces, err := serialproto.Fragments(body, serialproto.PieceSize(serialproto.MaxData, false))
	if err != nil || len(pieces) != 1 {
		t.Fatalf("%d fragments, %v", len(pieces), err)
	}
	raw, err := serialproto.AppendFrame(nil, serialproto.Frame{Version: serialproto.Version1, Cmd: serialproto.CmdInfer, Flags: serialproto.FlagFragment, Seq: 2, Data: pieces[0]})
	if err != nil {
		t.Fatal(err)
	}
	raw[40] ^= 0x10
	if _, err := serialproto.Decode(raw); !errors.Is(err, serialproto.ErrBadCRC) {
		t.Fatalf("the corrupted INFER decodes: %v", err)
	}

	// The janitor's ticker starts with the daemon, in its own goroutine: on
	// a loaded box it may not exist yet, and an Advance before it never
	// fires it (the ticker counts from the advanced time).
	for deadline := time.Now().Add(5 * time.Second); clk.tickers(heartbeat/4) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the janitor's ticker did not start")
		}
	}

	// tick advances the daemon's clock by one janitor period and waits
	// until the janitor has handled that tick (it marks each one for the
	// liveness check after expiring sessions, and closes what expired
	// before it takes the next).
	tick := func() {
		t.Helper()
		clk.Advance(heartbeat / 4)
		want := clk.Now().UnixNano()
		for deadline := time.Now().Add(5 * time.Second); d.live.lastBeat.Load() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the janitor did not tick")
			}
		}
	}
	ping := func() error {
		t.Helper()
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer pcancel()
		_, err := c.Ping(pctx)
		return err
	}

	// Six heartbeats of corrupt copies, one a heartbeat, as the device's
	// backed-off retransmissions came (4 s apart; 3 missed heartbeats
	// expire a session).
	for i := range 6 {
		before := d.Stats().BadFrames.Load()
		if err := tr.Send(raw); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); d.Stats().BadFrames.Load() == before; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("corrupt copy %d not seen by the daemon", i)
			}
		}
		for range 4 {
			tick()
		}
	}
	if err := ping(); err != nil {
		t.Fatalf("after %v of corrupt frames from the device: %v", 6*heartbeat, err)
	}

	// Control: the same port, silent for more than three heartbeats. The
	// client may have sent PING more than once — each NACK BAD_FRAME the
	// corrupt copies drew repeats it (§7.1), as does its timer on a slow
	// box — and ping returns on the first PONG. A copy the daemon handled
	// during the ticks below kept the session alive: the port was not
	// silent. One port's frames are handled in order, and a corrupt frame's
	// NACK is sent after its session was touched, so once the NACK of one
	// more corrupt copy is in, the line is quiet from the clock's now.
	if err := tr.Send(raw); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		f, err := tr.Recv(deadline)
		if err != nil {
			t.Fatalf("no NACK BAD_FRAME to the last corrupt copy: %v", err)
		}
		if f.Cmd == serialproto.CmdNack && bytes.Equal(f.Data, []byte{serialproto.NackBadFrame}) {
			break
		}
	}
	for range 4*3 + 2 {
		tick()
	}
	if err := ping(); errCode(err) != serialproto.CodeNoSession {
		t.Fatalf("a silent port's session did not expire: PING got %v", err)
	}
}
