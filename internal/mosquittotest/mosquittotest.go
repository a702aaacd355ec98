// Package mosquittotest runs a real MQTT broker — Debian's mosquitto 2.0 —
// for tests: on a free loopback port, from a generated configuration with
// authentication on (a password file written by mosquitto_passwd) and an
// ACL that keeps every device to its own topics (docs/protocol.md §7.4).
// No mock broker: what the MQTT link is tested against is what it meets in
// the field.
//
// Where mosquitto is not installed the test is skipped with a message,
// unless MCPD_REQUIRE_MQTT=1 (CI sets it, .ci/run installs the package):
// then its absence fails the test.
package mosquittotest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Accounts every broker has besides the devices'.
const (
	// DaemonUser is mcpd's account: it reads every device's up topics
	// (also through a shared subscription) and writes every down topic.
	DaemonUser = "mcpd"
	// AdminUser may publish and subscribe anywhere: tests use it to put
	// what no device may send (a bad device id in a topic, another
	// device's topic) in front of the daemon.
	AdminUser = "admin"
)

// Options shape the broker.
type Options struct {
	// Devices get an account each: the username is the device id, and the
	// ACL lets it publish only to mcpd/v1/<id>/up[/…] and read only
	// mcpd/v1/<id>/down[/…].
	Devices []string
	// TLS adds a second listener that requires TLS with a client
	// certificate signed by the test CA (Broker.CAFile, CertFile, KeyFile).
	TLS bool
}

// Broker is a running mosquitto, stopped when the test ends.
type Broker struct {
	// URL is the plain listener, "tcp://127.0.0.1:PORT".
	URL string
	// TLSURL is the TLS listener, "ssl://127.0.0.1:PORT", with Options.TLS.
	TLSURL string
	// CAFile signs the broker's certificate; CertFile and KeyFile are a
	// client certificate the TLS listener accepts.
	CAFile, CertFile, KeyFile string

	tb        testing.TB
	bin       string
	dir       string
	conf      string
	passwords map[string]string

	mu  sync.Mutex
	cmd *exec.Cmd
	log *bytes.Buffer
	out chan struct{} // closed when cmd has exited
}

// Binary returns mosquitto's path, or skips the test where it is absent
// (fails it under MCPD_REQUIRE_MQTT=1). Debian installs it in /usr/sbin,
// which is not on every user's PATH.
func Binary(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto"
	}
	if os.Getenv("MCPD_REQUIRE_MQTT") == "1" {
		tb.Fatal("mosquitto not found and MCPD_REQUIRE_MQTT=1 (apt-get install mosquitto)")
	}
	tb.Skip("mosquitto not found: MQTT tests need a real broker (apt-get install mosquitto)")
	return ""
}

// Start runs a broker for the test.
func Start(tb testing.TB, opts Options) *Broker {
	tb.Helper()
	bin := Binary(tb)
	passwd, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		passwd = "/usr/bin/mosquitto_passwd"
	}
	b := &Broker{tb: tb, bin: bin, dir: tb.TempDir(), passwords: map[string]string{}}
	users := append([]string{DaemonUser, AdminUser}, opts.Devices...)
	pwFile := filepath.Join(b.dir, "passwd")
	for i, u := range users {
		b.passwords[u] = "pw-" + u + "-" + strconv.Itoa(i)
		args := []string{"-b", pwFile, u, b.passwords[u]}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command(passwd, args...).CombinedOutput(); err != nil {
			tb.Fatalf("mosquitto_passwd %s: %v: %s", u, err, out)
		}
	}
	aclFile := filepath.Join(b.dir, "acl")
	if err := os.WriteFile(aclFile, []byte(acl), 0o600); err != nil {
		tb.Fatal(err)
	}
	port := freePort(tb)
	b.URL = "tcp://127.0.0.1:" + strconv.Itoa(port)
	var conf strings.Builder
	fmt.Fprintf(&conf, "per_listener_settings false\nallow_anonymous false\npassword_file %s\nacl_file %s\n", pwFile, aclFile)
	// set_tcp_nodelay: without it mosquitto's Nagle and the peers' delayed
	// ACKs held each small frame ~40 ms per leg (TTFT p50 88 ms over MQTT
	// against 0.09 ms over UDP in one bench run; 0.47 ms with it).
	conf.WriteString("set_tcp_nodelay true\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n")
	if os.Getuid() == 0 {
		// Started as root, mosquitto drops to the user "mosquitto", which
		// cannot read the test's private directory.
		conf.WriteString("user root\n")
	}
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", port)
	if opts.TLS {
		b.writeCerts()
		tlsPort := freePort(tb)
		b.TLSURL = "ssl://127.0.0.1:" + strconv.Itoa(tlsPort)
		fmt.Fprintf(&conf, "listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
			tlsPort, b.CAFile, filepath.Join(b.dir, "server.pem"), filepath.Join(b.dir, "server.key"))
	}
	b.conf = filepath.Join(b.dir, "mosquitto.conf")
	if err := os.WriteFile(b.conf, []byte(conf.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	b.start()
	tb.Cleanup(b.Stop)
	return b
}

// acl: the daemon reads up and writes down for every device, and its
// instances tell each other they are up or gone on mcpd/groups/…; a device
// (its username is its id) only its own. "#" after a level also matches
// the level itself, so mcpd/v1/%u/up/# allows mcpd/v1/<id>/up and the
// instance topics mcpd/v1/<id>/up/<instance> of a shared group.
const acl = `user mcpd
topic read mcpd/v1/+/up/#
topic write mcpd/v1/+/down/#
topic readwrite mcpd/groups/#

user admin
topic readwrite #

pattern write mcpd/v1/%u/up/#
pattern read mcpd/v1/%u/down/#
`

// Password is the account's password.
func (b *Broker) Password(user string) string {
	p, ok := b.passwords[user]
	if !ok {
		b.tb.Fatalf("mosquittotest: no account %q", user)
	}
	return p
}

// Addr is the plain listener's host:port.
func (b *Broker) Addr() string { return strings.TrimPrefix(b.URL, "tcp://") }

func (b *Broker) start() {
	b.tb.Helper()
	log := &bytes.Buffer{}
	w := &lockedWriter{mu: &b.mu, w: log}
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		b.tb.Fatalf("mosquittotest: start %s: %v", b.bin, err)
	}
	out := make(chan struct{})
	go func() { cmd.Wait(); close(out) }()
	b.mu.Lock()
	b.cmd, b.log, b.out = cmd, log, out
	b.mu.Unlock()
	if err := b.waitListening(out); err != nil {
		cmd.Process.Kill()
		<-out
		b.tb.Fatalf("mosquittotest: %v; broker log:\n%s", err, b.Log())
	}
}

// waitListening dials every listener until it accepts, or the broker
// exits, or 10 s pass.
func (b *Broker) waitListening(exited chan struct{}) error {
	addrs := []string{b.Addr()}
	if b.TLSURL != "" {
		addrs = append(addrs, strings.TrimPrefix(b.TLSURL, "ssl://"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-exited:
				return fmt.Errorf("mosquitto exited before listening on %s", a)
			case <-time.After(10 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("mosquitto not listening on %s after 10 s: %w", a, err)
			}
		}
	}
	return nil
}

// Stop ends the broker (SIGTERM, then SIGKILL after 5 s); its clients see
// the connection drop. It may be called more than once.
func (b *Broker) Stop() {
	b.mu.Lock()
	cmd, out := b.cmd, b.out
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-out:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-out
	}
}

// Restart stops the broker and starts it again on the same ports, with
// nothing remembered (persistence is off): every client must reconnect
// and subscribe again.
func (b *Broker) Restart() {
	b.tb.Helper()
	b.Stop()
	b.start()
}

// Log returns what the broker has logged so far.
func (b *Broker) Log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.log == nil {
		return ""
	}
	return b.log.String()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

// freePort asks the kernel for a loopback port nobody uses now.
func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// writeCerts makes a CA, the broker's certificate for 127.0.0.1 and a
// client certificate, all ECDSA P-256, valid for a day.
func (b *Broker) writeCerts() {
	b.tb.Helper()
	caKey, caCert, caDER := b.cert(nil, nil, "mcpd test CA", true, nil)
	b.CAFile = b.writePEM("ca.pem", "CERTIFICATE", caDER)
	srvKey, _, srvDER := b.cert(caCert, caKey, "127.0.0.1", false, []net.IP{net.IPv4(127, 0, 0, 1)})
	b.writePEM("server.pem", "CERTIFICATE", srvDER)
	b.writeKey("server.key", srvKey)
	cliKey, _, cliDER := b.cert(caCert, caKey, DaemonUser, false, nil)
	b.CertFile = b.writePEM("client.pem", "CERTIFICATE", cliDER)
	b.KeyFile = b.writeKey("client.key", cliKey)
}

func (b *Broker) cert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, ca bool, ips []net.IP) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	b.tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.tb.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, big.NewInt(1<<62))
	if err != nil {
		b.tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips, BasicConstraintsValid: true, IsCA: ca,
	}
	if ca {
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		b.tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		b.tb.Fatal(err)
	}
	return key, c, der
}

func (b *Broker) writePEM(name, typ string, der []byte) string {
	b.tb.Helper()
	p := filepath.Join(b.dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		b.tb.Fatal(err)
	}
	return p
}

func (b *Broker) writeKey(name string, k *ecdsa.PrivateKey) string {
	b.tb.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		b.tb.Fatal(errors.Join(errors.New("mosquittotest: key"), err))
	}
	return b.writePEM(name, "EC PRIVATE KEY", der)
}
