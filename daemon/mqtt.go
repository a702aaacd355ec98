package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
	"github.com/mcpd-project/mcpd/serialproto"
)

// MQTT binding (docs/protocol.md §7.4): one MCPFrame per message, binary
// payload. A device publishes on mcpd/v1/<id>/up and reads
// mcpd/v1/<id>/down; instances sharing devices through a group answer on
// mcpd/v1/<id>/down/<instance> and read mcpd/v1/<id>/up/<instance>, so a
// device's session stays on the instance that welcomed it.
const mqttTopicRoot = "mcpd/v1/"

// ErrMQTTTopic: a message on a topic that names no valid device.
var ErrMQTTTopic = errors.New("daemon: mqtt: topic names no valid device")

// errMQTTDown: a frame to send while the broker connection is down; the
// protocol's retransmissions repair the loss once it is back.
var errMQTTDown = errors.New("daemon: mqtt: not connected to the broker")

// MQTTLink serves the devices behind one MQTT broker. It keeps
// reconnecting, with backoff, whatever the broker does — refuses the
// credentials, restarts, goes away — and sessions, which live in the
// daemon keyed by link and device id, outlast the connection: a device
// picks up where it was once both are back, as after a serial unplug.
type MQTTLink struct {
	cfg      MQTTConfig
	broker   string // the URL paho dials, without credentials
	user     string
	password string
	tls      *tls.Config
	name     string
	log      *slog.Logger
	rto      time.Duration
	// Reconnection backoff: doubled after each failed attempt, jittered.
	minBackoff, maxBackoff time.Duration

	mu     sync.Mutex
	client mqtt.Client // nil while not connected
	// orphans are the group's instances that died (their will said so):
	// this instance shares their up topics, so that a device still
	// addressing one is told NO_SESSION at once and re-HELLOs.
	orphans map[string]bool
	health  portHealth // what LinkStates reports; warned: the cause last logged at ERROR

	in        chan<- mqtt.Message // Run's queue, for deliver
	connected atomic.Bool
	dropped   atomic.Int64 // messages dropped because the daemon fell behind
}

// NewMQTTLink checks cfg and reads its TLS files; it connects only when
// run.
func NewMQTTLink(cfg MQTTConfig, log *slog.Logger) (*MQTTLink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, user, password, _ := cfg.brokerURL()
	if cfg.Username == "" {
		cfg.Username, cfg.Password = user, password
	}
	t, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	if cfg.Instance == "" {
		var b [4]byte
		rand.Read(b[:])
		cfg.Instance = "mcpd-" + hex.EncodeToString(b[:])
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	scheme := map[string]string{"mqtt": "tcp", "mqtts": "ssl", "tls": "ssl"}[u.Scheme]
	if scheme != "" {
		u.Scheme = scheme
	}
	name := "mqtt:" + u.Host
	if cfg.Group != "" {
		name += "/" + cfg.Group
	}
	return &MQTTLink{
		cfg: cfg, broker: u.String(), user: cfg.Username, password: cfg.Password, tls: t,
		name: name, log: log, rto: 250 * time.Millisecond,
		minBackoff: 100 * time.Millisecond, maxBackoff: 10 * time.Second,
		health: portHealth{state: LinkState{Name: name, Error: "not connected yet", Since: time.Now()}},
	}, nil
}

func (l *MQTTLink) Name() string { return l.name }

// Instance is this instance's client id (and topic level in a group).
func (l *MQTTLink) Instance() string { return l.cfg.Instance }

// Connected reports whether the link holds a broker connection now.
func (l *MQTTLink) Connected() bool { return l.connected.Load() }

// Owns reports whether a session key belongs to a device behind this link.
func (l *MQTTLink) Owns(peerKey string) bool { return strings.HasPrefix(peerKey, l.name+"|") }

// SetBackoff sets the reconnection backoff's bounds (tests shorten them).
func (l *MQTTLink) SetBackoff(lo, hi time.Duration) { l.minBackoff, l.maxBackoff = lo, hi }

// filters are the subscriptions: every device's up topic (shared in a
// group) and, in a group, the up topics addressed to this instance.
func (l *MQTTLink) filters() map[string]byte {
	if l.cfg.Group == "" {
		return map[string]byte{mqttTopicRoot + "+/up": l.cfg.QoS}
	}
	return map[string]byte{
		"$share/" + l.cfg.Group + "/" + mqttTopicRoot + "+/up": l.cfg.QoS,
		mqttTopicRoot + "+/up/" + l.cfg.Instance:               l.cfg.QoS,
		l.groupTopic("+"):                                      1,
	}
}

// deviceOf returns the device id of an up topic this link subscribes to.
func (l *MQTTLink) deviceOf(topic string) (string, bool) {
	rest, ok := strings.CutPrefix(topic, mqttTopicRoot)
	if !ok {
		return "", false
	}
	id, tail, ok := strings.Cut(rest, "/")
	if !ok || !serialproto.ValidDeviceID(id) {
		return "", false
	}
	if tail == "up" || (l.cfg.Group != "" && tail == "up/"+l.cfg.Instance) {
		return id, true
	}
	if inst, ok := strings.CutPrefix(tail, "up/"); ok && l.orphaned(inst) {
		return id, true
	}
	return "", false
}

// groupTopic is where the group's instances say "up" when they connect
// and their will says "gone" when they die; "+" for every instance.
func (l *MQTTLink) groupTopic(inst string) string {
	return "mcpd/groups/" + l.cfg.Group + "/" + inst
}

func (l *MQTTLink) orphaned(inst string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.orphans[inst]
}

// instanceNews handles an instance's "up" or "gone": a dead instance's
// up topics are shared among the survivors until it is back.
func (l *MQTTLink) instanceNews(inst, news string) {
	if inst == l.cfg.Instance || !validLevel(inst) {
		return
	}
	l.mu.Lock()
	c := l.client
	was := l.orphans[inst]
	switch news {
	case "gone":
		l.orphans[inst] = true
	case "up":
		delete(l.orphans, inst)
	}
	now := l.orphans[inst]
	l.mu.Unlock()
	if c == nil || was == now {
		return
	}
	filter := "$share/" + l.cfg.Group + "/" + mqttTopicRoot + "+/up/" + inst
	if now {
		l.log.Info("mqtt: instance gone; its devices are told to HELLO again", "link", l.name, "instance", inst)
		c.Subscribe(filter, l.cfg.QoS, l.deliver) // not waited for: Run's loop must go on
	} else {
		l.log.Info("mqtt: instance back", "link", l.name, "instance", inst)
		c.Unsubscribe(filter)
	}
}

// Run connects and serves until ctx is done.
func (l *MQTTLink) Run(ctx context.Context, h Handler) error {
	// paho calls the message handler from its own goroutine; the frames
	// are handed over here so a busy daemon never stalls paho's keepalive.
	// A full queue drops (loss that retransmission repairs), as a full
	// UDP socket buffer does.
	in := make(chan mqtt.Message, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.connectLoop(ctx, h, in)
	}()
	defer func() { <-done }()
	stray := &mqttPeer{link: l}
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-in:
			if l.cfg.Group != "" {
				if inst, ok := strings.CutPrefix(m.Topic(), l.groupTopic("")); ok {
					l.instanceNews(inst, string(m.Payload()))
					continue
				}
			}
			id, ok := l.deviceOf(m.Topic())
			if !ok {
				h.HandleBadFrame(stray, fmt.Errorf("%w: %q", ErrMQTTTopic, m.Topic()))
				continue
			}
			p := l.peer(id)
			f, err := serialproto.Decode(m.Payload())
			if err != nil {
				h.HandleBadFrame(p, err)
				continue
			}
			h.HandleFrame(p, f)
		}
	}
}

// peer is the device id's peer: stateless, like a UDP source, so devices
// that only ever sent garbage cost no memory.
func (l *MQTTLink) peer(id string) *mqttPeer {
	down := mqttTopicRoot + id + "/down"
	if l.cfg.Group != "" {
		down += "/" + l.cfg.Instance
	}
	return &mqttPeer{link: l, id: id, down: down}
}

// connectLoop connects, subscribes, waits for the connection to drop and
// starts over, with backoff between failed attempts, until ctx is done.
func (l *MQTTLink) connectLoop(ctx context.Context, h Handler, in chan<- mqtt.Message) {
	backoff, connectedBefore := l.minBackoff, false
	for ctx.Err() == nil {
		lost := make(chan error, 1)
		c := mqtt.NewClient(l.options(lost))
		err := l.connect(ctx, c, in)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			wait := backoff/2 + mathrand.N(backoff/2+1)
			// Said at ERROR once per cause, with what usually fixes it; the
			// retries that fail the same way are only debug lines.
			level, hint := l.failed(err)
			l.log.Log(ctx, level, "mqtt: cannot connect; retrying", "link", l.name, "user", l.user, "err", err,
				"hint", hint, "retry_in", wait.Round(time.Millisecond))
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			backoff = min(2*backoff, l.maxBackoff)
			continue
		}
		backoff = l.minBackoff
		l.health.opened(time.Now())
		l.setClient(c)
		if connectedBefore {
			h.LinkStats(l.name, 0, 1)
		}
		connectedBefore = true
		l.log.Info("mqtt connected", "link", l.name, "instance", l.cfg.Instance, "group", l.cfg.Group, "qos", l.cfg.QoS)
		select {
		case <-ctx.Done():
			l.setClient(nil)
			c.Disconnect(250)
			return
		case err := <-lost:
			l.setClient(nil)
			l.health.lost(time.Now(), err)
			l.log.Warn("mqtt connection lost; reconnecting", "link", l.name, "err", err)
		}
	}
}

// failed records a failed connection attempt: the level to log it at
// (ERROR when the cause is news) and the hint for it.
func (l *MQTTLink) failed(err error) (slog.Level, string) {
	cause, hint := mqttCause(err)
	h := &l.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.state.Up || h.state.Error != cause {
		h.state.Since = time.Now()
	}
	h.state.Up, h.state.Error, h.state.Hint = false, cause, hint
	news := h.warned != cause
	h.warned = cause
	if news {
		return slog.LevelError, hint
	}
	return slog.LevelDebug, hint
}

// mqttCause is the short reason a connection failed and what usually
// fixes it.
func mqttCause(err error) (cause, hint string) {
	var (
		ce  *net.OpError
		ue  x509.UnknownAuthorityError
		he  x509.HostnameError
		tle *tls.CertificateVerificationError
	)
	msg := err.Error()
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised):
		return "the broker refused the account: " + msg,
			"check username and password (or password_file) against the broker's password file; mcpd keeps retrying"
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return "the broker rejected the client id: " + msg, "set instance to a client id the broker accepts"
	case errors.As(err, &ue), errors.As(err, &he), errors.As(err, &tle):
		return "TLS: " + msg, "ca_file must hold the CA that signed the broker's certificate, and the URL's host must be a name or address in it"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", "no broker listens at that address: is it running? mcpd keeps retrying"
	case errors.As(err, &ce) && ce.Timeout(), errors.Is(err, context.DeadlineExceeded):
		return "timed out: " + msg, "the broker does not answer: check the address, the network and any firewall"
	}
	return msg, ""
}

// LinkStates reports the broker connection: up while connected, else why
// not.
func (l *MQTTLink) LinkStates() []LinkState { return []LinkState{l.health.get()} }

func (l *MQTTLink) setClient(c mqtt.Client) {
	l.mu.Lock()
	l.client = c
	l.mu.Unlock()
	l.connected.Store(c != nil)
}

func (l *MQTTLink) current() mqtt.Client {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.client
}

func (l *MQTTLink) options(lost chan<- error) *mqtt.ClientOptions {
	o := mqtt.NewClientOptions().AddBroker(l.broker).SetClientID(l.cfg.Instance).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(10 * time.Second).SetWriteTimeout(5 * time.Second).
		SetKeepAlive(15 * time.Second).SetPingTimeout(5 * time.Second).SetOrderMatters(true).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	if l.user != "" {
		o.SetUsername(l.user).SetPassword(l.password)
	}
	if l.tls != nil {
		o.SetTLSConfig(l.tls)
	}
	if l.cfg.Group != "" {
		// The broker says "gone" for us when the connection dies without a
		// DISCONNECT: killed, hung past the keepalive, cut off.
		o.SetWill(l.groupTopic(l.cfg.Instance), "gone", 1, false)
	}
	return o
}

// connect opens the connection and subscribes; on any failure the client
// is disconnected and the error says what the broker refused.
func (l *MQTTLink) connect(ctx context.Context, c mqtt.Client, in chan<- mqtt.Message) error {
	if err := wait(ctx, c.Connect()); err != nil {
		return fmt.Errorf("connect to %s: %w", l.broker, err)
	}
	l.mu.Lock()
	l.in, l.orphans = in, map[string]bool{} // a clean session subscribes afresh
	l.mu.Unlock()
	filters := l.filters()
	tok := c.SubscribeMultiple(filters, l.deliver)
	err := wait(ctx, tok)
	if err == nil {
		for f, q := range tok.(*mqtt.SubscribeToken).Result() {
			if q == 0x80 {
				err = errors.Join(err, fmt.Errorf("broker refused the subscription %s (ACL?)", f))
			}
		}
	}
	if err != nil {
		c.Disconnect(0)
		return fmt.Errorf("subscribe at %s: %w", l.broker, err)
	}
	if l.cfg.Group != "" {
		// Up again (a restart under the same name): the others stop
		// answering for us.
		c.Publish(l.groupTopic(l.cfg.Instance), 1, false, "up")
	}
	return nil
}

// deliver is paho's message handler: it hands the message to Run.
func (l *MQTTLink) deliver(_ mqtt.Client, m mqtt.Message) {
	l.mu.Lock()
	in := l.in
	l.mu.Unlock()
	select {
	case in <- m:
	default:
		if l.dropped.Add(1)%256 == 1 {
			l.log.Warn("mqtt: daemon behind, messages dropped", "link", l.name, "dropped", l.dropped.Load())
		}
	}
}

// wait waits for a paho token or ctx.
func wait(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mqttPeer is a device behind the broker, known by its device id.
type mqttPeer struct {
	link *MQTTLink
	id   string
	down string
}

func (p *mqttPeer) Key() string           { return p.link.name + "|" + p.id }
func (p *mqttPeer) LinkName() string      { return p.link.name }
func (p *mqttPeer) Addr() netip.AddrPort  { return netip.AddrPort{} } // behind a broker: no source address
func (p *mqttPeer) ByteStream() bool      { return false }
func (p *mqttPeer) RTO(int) time.Duration { return p.link.rto }

// BoundDevice is the device id of the topic the frame came on: the broker
// authenticated its publisher and its ACL let it publish there.
func (p *mqttPeer) BoundDevice() string { return p.id }

// Send publishes one frame on the device's down topic. It does not wait
// for the broker: paho writes the frame later, so it gets its own copy.
func (p *mqttPeer) Send(frame []byte) error {
	if p.id == "" {
		return ErrMQTTTopic
	}
	c := p.link.current()
	if c == nil {
		return errMQTTDown
	}
	t := c.Publish(p.down, p.link.cfg.QoS, false, bytes.Clone(frame))
	select {
	case <-t.Done():
		return t.Error()
	default:
		return nil
	}
}
