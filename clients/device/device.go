package device

import (
	"errors"
	"time"

	"github.com/mcpd-project/mcpd/serialproto"
)

// ErrTimeout: the daemon did not answer within the retransmission budget,
// or a stream fell silent for three heartbeats. The error wrapping it says
// how many retransmissions were spent or how long the line was quiet.
var ErrTimeout = errors.New("device: no answer from the daemon")

// ErrChecksum: the reassembled answer does not match DONE's size or CRC-32C.
var ErrChecksum = errors.New("device: answer checksum mismatch")

// ErrNoSession: Ask or AskRetrying before a successful Hello.
var ErrNoSession = errors.New("device: Ask before Hello")

// Transport carries frames to and from the daemon: UDP (DialUDP), a byte
// stream such as a serial port (NewStream, OpenSerial), or anything else
// that delivers whole frames.
type Transport interface {
	// Send writes one encoded frame.
	Send(frame []byte) error
	// Recv returns the next sound frame before deadline, or an error
	// wrapping os.ErrDeadlineExceeded. Frame.Data is valid until the next
	// call.
	Recv(deadline time.Time) (serialproto.Frame, error)
	Close() error
}

// Config describes the device. The zero value is a usable unsigned device
// with the protocol's defaults.
type Config struct {
	DeviceID string        // sent in HELLO; the daemon keys sessions, limits and signing keys by it; default "mcpctl"
	MaxData  uint16        // largest data field it accepts; default 256
	Window   uint8         // chunks it buffers; default 4
	MaxSend  int           // largest data field it sends (smaller frames survive a noisy line); default: the daemon's limit
	RTO      time.Duration // initial retransmission timeout; default 250 ms (for a UART see SerialRTO)
	// MinRTO is the floor of the adaptive RTO (§7.2: RFC 6298 from the
	// round trips of requests sent once). Default on UDP: RTO or 10 ms,
	// whichever is less; on other transports RTO itself, so a serial line
	// never retransmits sooner than its line-rate RTO.
	MinRTO time.Duration
	// NoSACK makes the device acknowledge go-back-N only, as devices before
	// SACK did (§8.2): it does not ask for the feature and keeps no chunk
	// that arrives after a gap.
	NoSACK bool
	// NoStatusExt makes the device ask for the basic STATUS_REPLY, as
	// devices before the extended one did (§11.11): Status then carries no
	// cache figures. Either layout is read whatever the daemon sends.
	NoStatusExt bool
	Key         serialproto.Key // the device's signing key; zero: an unsigned session
	LinkID      uint8           // this link's id in signatures (0 UART, 1 Wi-Fi, ...)
	Retries     int             // retransmissions before giving up, and at least serialproto.RetryHorizon(RTO, Retries); default 8
	// Resume asks in every HELLO to continue the conversation the daemon
	// kept for this device (protocol.md §10: a signed device, or one on a
	// serial port), after a lost session or a daemon restart; Resumed
	// says whether the daemon did.
	Resume bool
}

// Client is one device's session with the daemon. Not safe for concurrent
// use: a microcontroller does one thing at a time.
type Client struct {
	t       Transport
	cfg     Config
	seq     uint8
	welcome serialproto.Welcome
	nonce   uint32
	turns   int                      // answers (DONE) the daemon keeps in this session's chat history
	rtt     serialproto.RTTEstimator // towards the daemon, fed by requests answered at once
	resent  uint64                   // frames sent again because the RTO expired

	// Signing (docs/protocol.md §9): the session's signer and verifier,
	// created from the WELCOME's daemon nonce.
	signer   *serialproto.Signer
	verifier *serialproto.Verifier

	// finished are the last answer streams that ended: each request's seq
	// and the ACK that acknowledged its final chunk, repeated should the
	// daemon retransmit that chunk after we moved on (our ACK was lost).
	// As many as the daemon remembers requests (docs/daemon.md): on a fast
	// link many requests end within one of the daemon's RTOs.
	finished [32]finishedStream
	nfin     int

	tools []Tool // declared (DeclareTools): what TOOL_CALLs run
}

func (c *Client) signing() bool { return !c.cfg.Key.IsZero() }

// encode puts a frame on the wire format: signed in a signed session, so a
// retransmission is a new frame with a new counter (§9.2).
func (c *Client) encode(f serialproto.Frame) ([]byte, error) {
	if c.signer != nil {
		return c.signer.AppendSigned(nil, f)
	}
	return serialproto.AppendFrame(nil, f)
}

// New returns a client speaking over t with cfg's defaults filled in. It
// sends nothing: call Hello to open the session. The client does not own
// t; close it after Bye.
func New(t Transport, cfg Config) *Client {
	if cfg.MaxData == 0 {
		cfg.MaxData = serialproto.MaxData
	}
	if cfg.Window == 0 {
		cfg.Window = 4
	}
	if cfg.RTO <= 0 {
		cfg.RTO = 250 * time.Millisecond
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 8
	}
	if cfg.DeviceID == "" {
		cfg.DeviceID = "mcpctl"
	}
	if cfg.MinRTO <= 0 {
		cfg.MinRTO = cfg.RTO
		if _, udp := t.(*UDP); udp {
			cfg.MinRTO = min(cfg.RTO, serialproto.MinRTO)
		}
	}
	return &Client{t: t, cfg: cfg, nonce: uint32(time.Now().UnixNano()),
		rtt: serialproto.NewRTTEstimator(cfg.RTO, cfg.MinRTO, max(serialproto.MaxRTO, cfg.RTO))}
}

// keepaliveInterval is how often a waiting device shows it is alive: well
// inside the daemon's heartbeat (a session expires after 3 missed).
func (c *Client) keepaliveInterval() time.Duration {
	hb := time.Duration(c.welcome.HeartbeatMS) * time.Millisecond
	if hb <= 0 {
		hb = 5 * time.Second
	}
	return max(hb/2, c.cfg.RTO)
}

// RTO is the current retransmission timeout towards the daemon, and the
// smoothed round trip it comes from (0 before the first sample).
func (c *Client) RTO() (rto, srtt time.Duration) { return c.rtt.RTO(), c.rtt.SRTT() }

// Retransmits counts the requests' frames sent again because the RTO
// expired with no answer (a NACK's repeats and a streaming device's
// repeated ACKs are not counted). On a link that loses nothing, every one
// was spurious: the answer was on its way.
func (c *Client) Retransmits() uint64 { return c.resent }

// Resumed reports whether the session continues a conversation the daemon
// kept for the device (Config.Resume, protocol.md §10): its next prompt
// then follows the earlier turns.
func (c *Client) Resumed() bool {
	return c.cfg.Resume && c.welcome.Features&serialproto.FeatureResume != 0
}

// sack reports whether the device asked for selective acknowledgment and
// the daemon granted it.
func (c *Client) sack() bool {
	return !c.cfg.NoSACK && c.welcome.Features&serialproto.FeatureSACK != 0
}

// Welcome is what the daemon granted.
func (c *Client) Welcome() serialproto.Welcome { return c.welcome }

func (c *Client) frame(seq uint8, flags serialproto.Flags, m serialproto.Message) ([]byte, error) {
	body, err := m.AppendBody(nil)
	if err != nil {
		return nil, err
	}
	return c.encode(serialproto.Frame{Version: serialproto.Version1, Cmd: m.Command(), Flags: flags, Seq: seq, Data: body})
}

func (c *Client) sendMsg(seq uint8, m serialproto.Message) error {
	f, err := c.frame(seq, 0, m)
	if err != nil {
		return err
	}
	return c.t.Send(f)
}
