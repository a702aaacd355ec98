package device

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mcpd-project/mcpd/serialproto"
)

// MQTTConfig is a device's broker connection (docs/protocol.md §7.4).
type MQTTConfig struct {
	// URL is the broker: tcp://host:1883, ssl://host:8883.
	URL string
	// DeviceID names the topics, mcpd/v1/<id>/up and …/down; it must be
	// the id the device's HELLO carries. It is also the client id.
	DeviceID string
	// Username and Password authenticate with the broker, whose ACL should
	// let this account publish only on its own up topics.
	Username, Password string
	TLS                *tls.Config
	// QoS of publishing and of the subscription: 0 (default) or 1.
	QoS byte
}

// MQTT is a Transport through an MQTT broker: one frame per message.
//
// HELLO goes to mcpd/v1/<id>/up, where any instance may take it (in a
// group, through the broker's shared subscription). The instance that
// welcomes the device answers on mcpd/v1/<id>/down/<instance>; from then
// on the device's frames go to mcpd/v1/<id>/up/<instance>, so its session
// stays on that instance. A daemon without a group answers on
// mcpd/v1/<id>/down and is addressed on mcpd/v1/<id>/up. The next HELLO —
// after the instance has gone silent, say — is placed afresh.
//
// The broker connection is re-established by itself after a drop;
// frames sent meanwhile are lost and repaired by the protocol's
// retransmissions.
type MQTT struct {
	client mqtt.Client
	qos    byte
	id     string
	in     chan []byte

	mu       sync.Mutex
	instance string     // the instance that welcomed the session; "" none
	hello    bool       // a HELLO went out: the next WELCOME decides the instance
	last     mqtt.Token // the last publish, which Close lets finish
}

// DialMQTT connects to the broker and subscribes to the device's down
// topics. A refused connection (bad credentials, no broker) is an error
// here; later drops are reconnected in the background.
func DialMQTT(ctx context.Context, cfg MQTTConfig) (*MQTT, error) {
	if !serialproto.ValidDeviceID(cfg.DeviceID) {
		return nil, fmt.Errorf("device: mqtt: device id %q is not a valid id", cfg.DeviceID)
	}
	if cfg.QoS > 1 {
		return nil, fmt.Errorf("device: mqtt: qos %d, want 0 or 1", cfg.QoS)
	}
	// mqtt:// and mqtts:// are paho's tcp:// and ssl://; user:password in
	// the URL are the credentials when none are given.
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("device: mqtt url: %w", err)
	}
	if s, ok := map[string]string{"mqtt": "tcp", "mqtts": "ssl", "tls": "ssl"}[u.Scheme]; ok {
		u.Scheme = s
	}
	if u.User != nil {
		if cfg.Username == "" {
			cfg.Username = u.User.Username()
			cfg.Password, _ = u.User.Password()
		}
		u.User = nil
	}
	cfg.URL = u.String()
	m := &MQTT{qos: cfg.QoS, id: cfg.DeviceID, in: make(chan []byte, 64)}
	filter := "mcpd/v1/" + cfg.DeviceID + "/down/#"
	subscribed := make(chan error, 1)
	o := mqtt.NewClientOptions().AddBroker(cfg.URL).SetClientID(cfg.DeviceID).
		SetCleanSession(true).SetAutoReconnect(true).SetConnectRetry(false).
		SetMaxReconnectInterval(2 * time.Second).SetConnectTimeout(10 * time.Second).
		SetKeepAlive(15 * time.Second).SetWriteTimeout(5 * time.Second).SetOrderMatters(true).
		SetOnConnectHandler(func(c mqtt.Client) {
			// Called in its own goroutine on every (re)connection: a clean
			// session forgets subscriptions, so subscribe each time.
			t := c.Subscribe(filter, cfg.QoS, m.deliver)
			t.Wait()
			select {
			case subscribed <- t.Error():
			default:
			}
		})
	if cfg.Username != "" {
		o.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	if cfg.TLS != nil {
		o.SetTLSConfig(cfg.TLS)
	}
	m.client = mqtt.NewClient(o)
	if err := waitToken(ctx, m.client.Connect()); err != nil {
		return nil, fmt.Errorf("device: mqtt connect to %s as %q: %w", cfg.URL, cfg.Username, err)
	}
	select {
	case err := <-subscribed:
		if err != nil {
			m.client.Disconnect(0)
			return nil, fmt.Errorf("device: mqtt subscribe %s: %w", filter, err)
		}
	case <-ctx.Done():
		m.client.Disconnect(0)
		return nil, ctx.Err()
	}
	return m, nil
}

func waitToken(ctx context.Context, t mqtt.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// deliver runs on paho's goroutine: it notes the instance a WELCOME came
// from and queues the payload; a full queue drops (as a full UART buffer
// would), which retransmission repairs.
func (m *MQTT) deliver(_ mqtt.Client, msg mqtt.Message) {
	p := msg.Payload()
	inst, ok := downInstance(m.id, msg.Topic())
	if !ok {
		return
	}
	if len(p) >= serialproto.HeaderLen && serialproto.Command(p[4]&0x3F) == serialproto.CmdWelcome {
		m.mu.Lock()
		if m.hello {
			m.instance, m.hello = inst, false
		}
		m.mu.Unlock()
	}
	select {
	case m.in <- p:
	default:
	}
}

// downInstance reads a topic the device subscribed to: its own down topic,
// mcpd/v1/<id>/down ("" instance), or an instance's, mcpd/v1/<id>/down/<inst>
// with <inst> one topic level.
func downInstance(id, topic string) (inst string, ok bool) {
	rest, ok := strings.CutPrefix(topic, "mcpd/v1/"+id+"/down")
	if !ok {
		return "", false
	}
	if rest == "" {
		return "", true
	}
	inst, ok = strings.CutPrefix(rest, "/")
	if !ok || inst == "" || strings.Contains(inst, "/") {
		return "", false
	}
	return inst, true
}

// Instance is the instance the session is on ("" for a daemon without a
// group, or before the first WELCOME).
func (m *MQTT) Instance() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.instance
}

// Send publishes one frame: a HELLO on the device's up topic, anything
// else on the up topic of the instance that welcomed it.
func (m *MQTT) Send(frame []byte) error {
	topic := "mcpd/v1/" + m.id + "/up"
	m.mu.Lock()
	if len(frame) >= serialproto.HeaderLen && serialproto.Command(frame[4]&0x3F) == serialproto.CmdHello {
		m.hello = true
	} else if m.instance != "" {
		topic += "/" + m.instance
	}
	m.mu.Unlock()
	t := m.client.Publish(topic, m.qos, false, append([]byte(nil), frame...))
	m.mu.Lock()
	m.last = t
	m.mu.Unlock()
	select {
	case <-t.Done():
		return t.Error()
	default:
		return nil // written by paho later; the frame is its own copy
	}
}

// Recv returns the next sound frame before deadline; other payloads are
// skipped, as a device must.
func (m *MQTT) Recv(deadline time.Time) (serialproto.Frame, error) {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		select {
		case p := <-m.in:
			if f, err := serialproto.Decode(p); err == nil {
				return f, nil
			}
		case <-timer.C:
			return serialproto.Frame{}, fmt.Errorf("device: mqtt: %w", os.ErrDeadlineExceeded)
		}
	}
}

// Close lets the last frame go out (the ACK of a final chunk, typically:
// lost, it would keep the daemon retransmitting the chunk), for at most a
// second, then disconnects from the broker.
func (m *MQTT) Close() error {
	if m.client == nil {
		return errors.New("device: mqtt: not connected")
	}
	m.mu.Lock()
	last := m.last
	m.mu.Unlock()
	if last != nil {
		last.WaitTimeout(time.Second)
	}
	m.client.Disconnect(100)
	return nil
}
