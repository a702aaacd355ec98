package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/mcpd-project/mcpd/daemon"
)

// schemaConfig is one [schemas.NAME] table: the answer constraint a device
// names by id in an INFER's SCHEMA option (docs/protocol.md §11.4.1).
// Exactly one of File, JSON and GBNF gives it; a file whose name ends in
// .gbnf is a GBNF grammar, any other a JSON Schema of the subset.
type schemaConfig struct {
	ID   int    `toml:"id"`   // 1..255, what the device sends
	File string `toml:"file"` // a JSON Schema or .gbnf file
	JSON string `toml:"json"` // a JSON Schema, inline
	GBNF string `toml:"gbnf"` // a GBNF grammar, inline (native engine only)
}

// schemas compiles the [schemas] tables. Errors name the schema.
func (c *config) schemas() (map[uint8]daemon.Schema, error) {
	if len(c.Schemas) == 0 {
		return nil, nil
	}
	names := make([]string, 0, len(c.Schemas))
	for n := range c.Schemas {
		names = append(names, n)
	}
	sort.Strings(names) // the same error for the same file, whatever map order
	out := make(map[uint8]daemon.Schema, len(names))
	byID := make(map[int]string, len(names))
	for _, name := range names {
		sc := c.Schemas[name]
		if sc.ID < 1 || sc.ID > 255 {
			return nil, fmt.Errorf("schemas.%s: id %d, want 1..255", name, sc.ID)
		}
		if other, dup := byID[sc.ID]; dup {
			return nil, fmt.Errorf("schemas.%s: id %d is also schemas.%s's", name, sc.ID, other)
		}
		byID[sc.ID] = name
		set := 0
		for _, v := range []string{sc.File, sc.JSON, sc.GBNF} {
			if v != "" {
				set++
			}
		}
		if set != 1 {
			return nil, fmt.Errorf("schemas.%s: give exactly one of file, json and gbnf", name)
		}
		var (
			s   daemon.Schema
			err error
		)
		switch {
		case sc.File != "":
			b, rerr := os.ReadFile(sc.File)
			if rerr != nil {
				return nil, fmt.Errorf("schemas.%s: %w", name, rerr)
			}
			if strings.HasSuffix(sc.File, ".gbnf") {
				s, err = daemon.NewGBNFSchema(name, string(b))
			} else {
				s, err = daemon.NewJSONSchema(name, b)
			}
		case sc.JSON != "":
			s, err = daemon.NewJSONSchema(name, []byte(sc.JSON))
		default:
			s, err = daemon.NewGBNFSchema(name, sc.GBNF)
		}
		if err != nil {
			return nil, err
		}
		out[uint8(sc.ID)] = s
	}
	return out, nil
}
