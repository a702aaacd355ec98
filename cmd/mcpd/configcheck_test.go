package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// Mistakes in the file or on the command line come back in the file's
// terms: the key (and flag), the line, what is allowed, a near key for a
// typo; nothing is silently replaced.
func TestConfigMistakes(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cores := strconv.Itoa(runtime.NumCPU())
	for _, tc := range []struct {
		name string
		args []string
		want string // the whole error
	}{
		{"typo", []string{"--config", write("typo.toml", "[limits]\nmax_concurent = 3\n")},
			"unknown keys: limits.max_concurent (did you mean limits.max_concurrent?)"},
		{"wrong table", []string{"--config", write("table.toml", "max_queue = 3\n")},
			"unknown keys: max_queue (did you mean limits.max_queue?)"},
		{"no near key", []string{"--config", write("far.toml", "colour = \"blue\"\n")}, "unknown keys: colour"},
		{"string for a list", []string{"--config", write("list.toml", "\n\nserial = \"/dev/ttyUSB0\"\n")},
			`line 3: serial must be a list, not a quoted string (write serial = ["…"], a list even for one)`},
		{"string for a number", []string{"--config", write("num.toml", "[limits]\nmax_queue = \"ten\"\n")},
			"line 2: limits.max_queue must be a whole number, not a quoted string"},
		{"syntax", []string{"--config", write("syntax.toml", "serial = [\n")}, "line 1: unexpected EOF; expected value"},
		{"negative concurrency", []string{"--max-concurrent", "-3"},
			"limits.max_concurrent = -3 (--max-concurrent): out of range, allowed 0 (the engine's capacity) or 1..256"},
		{"threads above the cores", []string{"--threads", "9999"},
			"engine.threads = 9999 (--threads): out of range, allowed 0 (all " + cores + " cores) or 1.." + cores},
		{"huge context", []string{"--ctx", "999999"},
			"engine.context_size = 999999 (--ctx): out of range, allowed 0 (the model's, at most 2048) or 64..131072"},
		{"queue below none", []string{"--max-queue", "-5"},
			"limits.max_queue = -5 (--max-queue): out of range, allowed -1..65535 (-1: no queue)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuffer
			err := run(context.Background(), append([]string{"--listen-udp", "127.0.0.1:0", "--check-config"}, tc.args...), noEnv, &out, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant an error with %q", err, tc.want)
			}
		})
	}
}

// --check-config prints the configuration in force by the file's key
// names, defaults filled in, keys hidden.
func TestCheckConfigPrintsTOMLKeys(t *testing.T) {
	model := tinyModel(t)
	path := filepath.Join(t.TempDir(), "mcpd.toml")
	secret := strings.Repeat("cd", 32)
	conf := "model = \"" + model + "\"\n[limits]\nmax_queue = -1\n[keys]\npump = \"" + secret + "\"\n"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	if err := run(context.Background(), []string{"--config", path, "--check-config", "--threads", "1"}, noEnv, &out, &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"[limits]", "max_queue = -1", "max_sessions = 256", `request_timeout = "2m0s"`,
		"[engine]", "threads = 1", "[keys]", `pump = "(hidden)"`, "log_format = \"auto\""} {
		if !strings.Contains(text, want) {
			t.Errorf("--check-config lacks %q:\n%s", want, text)
		}
	}
	for _, goName := range []string{"MaxQueue", "RequestTimeout", "Threads:", secret} {
		if strings.Contains(text, goName) {
			t.Errorf("--check-config shows %q:\n%s", goName, text)
		}
	}
}

// A directory named as the model is called one, not a corrupt file.
func TestModelDirectory(t *testing.T) {
	dir := t.TempDir()
	var out syncBuffer
	if err := run(context.Background(), []string{"--listen-udp", "127.0.0.1:0", "--check-config", "--backend", "native", "--model", dir}, noEnv, &out, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "is a directory") {
		t.Fatalf("output: %s", out.String())
	}
}

// An unknown flag is printed once (with the usage) by the flag package;
// run's error says main must not print it again.
func TestUnknownFlagPrintedOnce(t *testing.T) {
	var out syncBuffer
	err := run(context.Background(), []string{"--bogus"}, noEnv, &out, &out)
	var fe flagError
	if !errors.As(err, &fe) {
		t.Fatalf("got %v, want a flagError", err)
	}
	if n := strings.Count(out.String(), "flag provided but not defined: -bogus"); n != 1 {
		t.Fatalf("printed %d times:\n%s", n, out.String())
	}
}

// TestConfigSecrets: a key never appears in an error, whatever is wrong
// with it; a config holding keys that group or others may read is warned
// about, or refused with secrets_mode = "refuse".
func TestConfigSecrets(t *testing.T) {
	dir := t.TempDir()
	model := tinyModel(t)
	const secret = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		wantErr string // "" : no error
		wantLog string
	}{
		{"not hex", "[keys]\nkitchen = \"" + secret + "zz\"\n", 0o600, "the key is not hex", ""},
		{"short", "[keys]\nkitchen = \"" + secret[:8] + "\"\n", 0o600, "keys: device kitchen", ""},
		{"syntax in keys", "log_level = \"info\"\n[keys]\nkitchen = \"" + secret + "\n", 0o600, "the line is not shown", ""},
		{"syntax next to keys", "[keys]\nkitchen = \"" + secret + "\"\n[limits]\nmax_queue = = 3\n", 0o600, "the line is not shown", ""},
		{"readable by others", "[keys]\nkitchen = \"" + secret + "\"\n", 0o644, "", "group or others may read it"},
		{"refused", "secrets_mode = \"refuse\"\n[keys]\nkitchen = \"" + secret + "\"\n", 0o640, "chmod 600", ""},
		{"private", "secrets_mode = \"refuse\"\n[keys]\nkitchen = \"" + secret + "\"\n", 0o600, "", ""},
		{"no secrets", "[limits]\nmax_queue = 3\n", 0o644, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "_")+".toml", "model = \""+model+"\"\n"+tc.content, tc.mode)
			var out syncBuffer
			err := run(context.Background(), []string{"--listen-udp", "127.0.0.1:0", "--check-config", "--threads", "1", "--config", p}, noEnv, &out, &out)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
			}
			all := out.String()
			if err != nil {
				all += err.Error()
			}
			if strings.Contains(all, secret[:8]) {
				t.Fatalf("the key is in the output: %s", all)
			}
			if got := strings.Contains(all, "group or others may read it"); got != (tc.wantLog != "") {
				t.Fatalf("warning %v, want %v: %s", got, tc.wantLog != "", all)
			}
		})
	}
}
