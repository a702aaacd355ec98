package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigMQTT: [[mqtt]] entries with a password file, the --mqtt flags
// that replace them, and the mistakes --check-config reports; passwords
// never reach the output.
func TestConfigMQTT(t *testing.T) {
	model := tinyModel(t)
	dir := t.TempDir()
	pw := filepath.Join(dir, "mqtt.pw")
	if err := os.WriteFile(pw, []byte("s3cret-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("model = \""+model+"\"\n"+body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.toml", "[[mqtt]]\nurl = \"tcp://127.0.0.1:1883\"\nusername = \"mcpd\"\npassword_file = \""+pw+"\"\ngroup = \"hall\"\n"+
		"[[mqtt]]\nurl = \"mqtt://127.0.0.1:1884\"\npassword = \"inline-pw\"\nqos = 1\n")
	for _, tc := range []struct {
		name string
		args []string
		want []string // in the output; an error when it starts with "error: "
	}{
		{"file", []string{"--config", good}, []string{"udp []", "mqtt [mqtt:127.0.0.1:1883/hall mqtt:127.0.0.1:1884]"}},
		{"flag replaces", []string{"--config", good, "--mqtt", "tcp://u:flag-pw@127.0.0.1:1999", "--mqtt-group", "g2"}, []string{"mqtt [mqtt:127.0.0.1:1999/g2]"}},
		{"group flag on the file's", []string{"--config", good, "--mqtt-group", "g3"}, []string{"mqtt [mqtt:127.0.0.1:1883/g3 mqtt:127.0.0.1:1884/g3]"}},
		{"with udp", []string{"--config", good, "--listen-udp", "127.0.0.1:7799"}, []string{"udp [127.0.0.1:7799]"}},
		{"bad qos", []string{"--config", write("qos.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\nqos = 2\n")}, []string{"error: qos 2"}},
		{"both passwords", []string{"--config", write("both.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\npassword = \"x\"\npassword_file = \""+pw+"\"\n")}, []string{"error: both set"}},
		{"missing password file", []string{"--config", write("nofile.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\npassword_file = \"/nonexistent/pw\"\n")}, []string{"error: password_file"}},
		{"bad url", []string{"--mqtt", "http://h:1"}, []string{"error: scheme"}},
		{"bad group", []string{"--mqtt", "tcp://h:1", "--mqtt-group", "a/b"}, []string{"error: group"}},
		{"unknown key", []string{"--config", write("typo.toml", "[[mqtt]]\nurl = \"tcp://h:1\"\nqso = 1\n")}, []string{"error: unknown keys: mqtt.qso"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			err := run(context.Background(), append(tc.args, "--check-config", "--model", model), noEnv, &out, &out)
			for _, w := range tc.want {
				if msg, isErr := strings.CutPrefix(w, "error: "); isErr {
					if err == nil || !strings.Contains(err.Error(), msg) {
						t.Fatalf("got %v, want an error with %q", err, msg)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out.String(), w) {
					t.Fatalf("output lacks %q:\n%s", w, out.String())
				}
			}
			for _, secret := range []string{"s3cret-pw", "inline-pw", "flag-pw"} {
				if strings.Contains(out.String(), secret) || (err != nil && strings.Contains(err.Error(), secret)) {
					t.Fatalf("a password reached the output: %s %v", out.String(), err)
				}
			}
		})
	}
}
