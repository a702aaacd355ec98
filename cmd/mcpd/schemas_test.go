package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigSchemas: [schemas] tables compile into the daemon's schemas
// by id, from a file (JSON Schema or .gbnf) or inline; every mistake is an
// error naming the schema.
func TestConfigSchemas(t *testing.T) {
	dir := t.TempDir()
	jsonFile := filepath.Join(dir, "fan.json")
	gbnfFile := filepath.Join(dir, "yesno.gbnf")
	if err := os.WriteFile(jsonFile, []byte(`{"type":"object","properties":{"fan":{"type":"integer","minimum":0,"maximum":3}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(gbnfFile, []byte(`root ::= "yes" | "no"`), 0o644); err != nil {
		t.Fatal(err)
	}
	load := func(t *testing.T, body string) (config, error) {
		p := filepath.Join(t.TempDir(), "mcpd.toml")
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		c := defaultConfig()
		return c, c.loadFile(p, true)
	}
	good := "[schemas.fan]\nid = 1\nfile = \"" + jsonFile + "\"\n" +
		"[schemas.yesno]\nid = 2\nfile = \"" + gbnfFile + "\"\n" +
		"[schemas.ok]\nid = 255\njson = '{\"type\":\"boolean\"}'\n" +
		"[schemas.digit]\nid = 4\ngbnf = 'root ::= [0-9]'\n"
	c, err := load(t, good)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.schemas()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 || got[1].Name != "fan" || !strings.Contains(got[1].Grammar, `"{\"fan\":"`) || got[1].MaxTokens != 10 ||
		got[2].Grammar != `root ::= "yes" | "no"` || got[2].JSON != nil || string(got[255].JSON) != `{"type":"boolean"}` || got[4].Grammar != "root ::= [0-9]" {
		t.Fatalf("schemas %+v", got)
	}
	for _, tc := range []struct{ name, body, want string }{
		{"id 0", "[schemas.a]\nid = 0\njson = '{\"type\":\"null\"}'\n", "schemas.a: id 0"},
		{"id 256", "[schemas.a]\nid = 256\njson = '{\"type\":\"null\"}'\n", "id 256"},
		{"duplicate id", "[schemas.a]\nid = 3\njson = '{\"type\":\"null\"}'\n[schemas.b]\nid = 3\njson = '{\"type\":\"null\"}'\n", "id 3 is also schemas.a's"},
		{"no source", "[schemas.a]\nid = 3\n", "exactly one"},
		{"two sources", "[schemas.a]\nid = 3\njson = '{\"type\":\"null\"}'\ngbnf = 'root ::= \"x\"'\n", "exactly one"},
		{"missing file", "[schemas.a]\nid = 3\nfile = \"" + filepath.Join(dir, "none.json") + "\"\n", "no such file"},
		{"outside the subset", "[schemas.a]\nid = 3\njson = '{\"type\":\"string\",\"format\":\"date\"}'\n", "schema a: grammar: unsupported schema"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := load(t, tc.body)
			if err == nil {
				_, err = c.schemas()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want it to mention %q", err, tc.want)
			}
		})
	}
	if _, err := load(t, "[schemas.a]\nid = 1\npath = \"x\"\n"); err == nil || !strings.Contains(err.Error(), "schemas.a.path") {
		t.Fatalf("unknown key: %v", err)
	}
}
