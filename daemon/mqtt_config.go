package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// MQTTConfig is one broker connection.
type MQTTConfig struct {
	// URL is the broker: tcp://host:1883 or mqtt://…; ssl://, tls:// or
	// mqtts://host:8883 for TLS. A user:password in the URL is used when
	// Username is empty.
	URL      string
	Username string
	Password string
	// CAFile is a PEM bundle of the CAs that sign the broker's
	// certificate (default: the system's); CertFile and KeyFile are a
	// client certificate for brokers that require one.
	CAFile, CertFile, KeyFile string
	// Group shares devices among the instances with the same group through
	// a shared subscription ($share/<group>/mcpd/v1/+/up). Empty: this
	// instance alone serves the broker's devices.
	Group string
	// Instance names this instance: its MQTT client id and, in a group,
	// the last level of its topics. Default "mcpd-" and 8 random hex
	// digits. Two connections with one client id push each other off the
	// broker.
	Instance string
	// QoS of the subscriptions and of what the daemon publishes: 0
	// (default: MCPFrame's own acknowledgements repair loss) or 1.
	QoS byte
}

// brokerURL returns the URL without credentials and the credentials it
// carried.
func (c MQTTConfig) brokerURL() (u *url.URL, user, password string, err error) {
	u, err = url.Parse(c.URL)
	if err != nil {
		return nil, "", "", fmt.Errorf("daemon: mqtt url: %w", err)
	}
	switch u.Scheme {
	case "tcp", "mqtt", "ssl", "tls", "mqtts":
	default:
		return nil, "", "", fmt.Errorf("daemon: mqtt url %q: scheme %q, want tcp, mqtt, ssl, tls or mqtts", u.Redacted(), u.Scheme)
	}
	if u.Host == "" || u.Port() == "" {
		return nil, "", "", fmt.Errorf("daemon: mqtt url %q: want scheme://host:port", u.Redacted())
	}
	if u.User != nil {
		user = u.User.Username()
		password, _ = u.User.Password()
		u.User = nil
	}
	if u.Path != "" && u.Path != "/" {
		return nil, "", "", fmt.Errorf("daemon: mqtt url %q: no path expected", u.Redacted())
	}
	u.Path = ""
	return u, user, password, nil
}

func (c MQTTConfig) secure() bool {
	s, _, _ := strings.Cut(c.URL, "://")
	return s == "ssl" || s == "tls" || s == "mqtts"
}

// validLevel reports whether s can be one topic level and a client id.
func validLevel(s string) bool {
	return s != "" && len(s) <= 64 && !strings.ContainsAny(s, "/+#\x00 ") && s[0] != '$'
}

// Validate checks the configuration without connecting or reading files.
func (c MQTTConfig) Validate() error {
	if _, _, _, err := c.brokerURL(); err != nil {
		return err
	}
	if c.Group != "" && !validLevel(c.Group) {
		return fmt.Errorf("daemon: mqtt group %q: want 1..64 characters without / + # $ or spaces", c.Group)
	}
	if c.Instance != "" && !validLevel(c.Instance) {
		return fmt.Errorf("daemon: mqtt instance %q: want 1..64 characters without / + # $ or spaces", c.Instance)
	}
	if c.QoS > 1 {
		return fmt.Errorf("daemon: mqtt qos %d: want 0 or 1", c.QoS)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return errors.New("daemon: mqtt: a client certificate needs both cert_file and key_file")
	}
	if (c.CAFile != "" || c.CertFile != "") && !c.secure() {
		return fmt.Errorf("daemon: mqtt: ca_file and cert_file need a TLS URL (ssl://, mqtts://), not %q", c.URL)
	}
	return nil
}

// tlsConfig reads the CA and client certificate files.
func (c MQTTConfig) tlsConfig() (*tls.Config, error) {
	if !c.secure() {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("daemon: mqtt ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("daemon: mqtt ca_file %s: no PEM certificate in it", c.CAFile)
		}
		conf.RootCAs = pool
	}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("daemon: mqtt client certificate: %w", err)
		}
		conf.Certificates = []tls.Certificate{cert}
	}
	return conf, nil
}
