package daemon

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/mcpd-project/mcpd/backends/grammar"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Schema is a constraint on answers (docs/protocol.md §11.4.1): a device
// names a registered one by its one-byte id (SCHEMA) or sends a JSON
// Schema inline (SCHEMA_JSON).
type Schema struct {
	Name    string          // for logs and /status
	Grammar string          // GBNF, root rule "root": what the in-process engine samples under
	JSON    json.RawMessage // the JSON Schema, minified, when there is one: Ollama's format
	// MaxTokens is what the request may generate when the INFER has no
	// MAX_TOKENS: enough for the longest answer the schema admits (one
	// byte per token at worst, and the end). 0 for a GBNF grammar, whose
	// answers have no known bound: the daemon's default applies.
	MaxTokens int
}

// NewJSONSchema compiles a JSON Schema of the subset (backends/grammar).
func NewJSONSchema(name string, data []byte) (Schema, error) {
	s, err := grammar.Parse(data)
	if err != nil {
		return Schema{}, fmt.Errorf("schema %s: %w", name, err)
	}
	return Schema{Name: name, Grammar: s.GBNF(), JSON: s.JSON(), MaxTokens: min(s.MaxBytes()+1, 65535)}, nil
}

// NewGBNFSchema takes a GBNF grammar as it is. Only the operator's config
// supplies one: llama.cpp's grammar parser and matcher are not hardened
// against hostile grammars, so devices may send JSON Schemas only, which
// the daemon compiles itself. The grammar is checked when a request first
// uses it; Ollama cannot take one (the request ends UNSUPPORTED_OPTION).
func NewGBNFSchema(name, gbnf string) (Schema, error) {
	if gbnf == "" {
		return Schema{}, fmt.Errorf("schema %s: empty grammar", name)
	}
	return Schema{Name: name, Grammar: gbnf}, nil
}

// schemaFor resolves an INFER's SCHEMA or SCHEMA_JSON option. A request
// with neither gets nil; an unknown id, a schema outside the subset, or
// both options at once are refused with UNSUPPORTED_OPTION before the ACK —
// the device must not get an answer it cannot parse. A schema's MaxTokens
// becomes the INFER's MAX_TOKENS when the device gave none.
func (s *session) schemaFor(m *serialproto.Infer) (*Schema, *serialproto.Error) {
	byID, inline := m.Set.Has(serialproto.OptSchema), m.Set.Has(serialproto.OptSchemaJSON)
	var sc Schema
	switch {
	case byID && inline:
		return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, "SCHEMA and SCHEMA_JSON together")
	case byID:
		var ok bool
		if sc, ok = s.d.conf().Schemas[m.SchemaID]; !ok {
			return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, "no schema "+strconv.Itoa(int(m.SchemaID)))
		}
	case inline:
		var err error
		if sc, err = NewJSONSchema("inline", []byte(m.SchemaJSON)); err != nil {
			return nil, serialproto.NewError(serialproto.CodeUnsupportedOption, deviceText(err))
		}
	default:
		return nil, nil
	}
	if sc.MaxTokens > 0 && !(m.Set.Has(serialproto.OptMaxTokens) && m.MaxTokens > 0) {
		m.Set = m.Set.With(serialproto.OptMaxTokens)
		m.MaxTokens = uint16(sc.MaxTokens)
	}
	return &sc, nil
}
