// Package grammar turns a small subset of JSON Schema into a GBNF grammar
// for llama.cpp's grammar sampler, and checks answers against it.
//
// The subset is chosen so that every answer the grammar admits is valid
// JSON of the schema and is bounded in length — a microcontroller gets a
// decision it can parse, never prose, and a random-weight model cannot
// wander forever inside a string. Output is minified, 7-bit ASCII JSON (no
// whitespace outside strings, non-ASCII as \u escapes) with object
// properties in the schema's order; see
// docs/protocol.md §11.4.1 for the subset and why minified JSON.
//
// Keywords that would constrain an answer and are not in the subset
// (pattern, format, oneOf, $ref, …) are errors, never silently ignored:
// the guarantee would not hold otherwise.
package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// ErrUnsupported: the schema uses something outside the subset.
var ErrUnsupported = errors.New("grammar: unsupported schema")

// ErrInvalid: an answer does not match the schema.
var ErrInvalid = errors.New("grammar: answer does not match the schema")

// Limits of the subset. Defaults apply where a schema gives no bound.
const (
	DefaultMaxLength = 32   // characters of a string without maxLength
	DefaultMaxItems  = 8    // items of an array without maxItems
	MaxLengthLimit   = 256  // largest maxLength accepted
	MaxItemsLimit    = 64   // largest maxItems accepted
	MaxDepth         = 8    // nesting of objects, arrays and anyOf
	MaxNodes         = 256  // schemas (nodes) in one document
	MaxEnumValues    = 64   // values of one enum
	MaxIntRange      = 1024 // largest maximum−minimum of an integer with both bounds
	MaxAnswerBytes   = 8192 // largest answer a schema may allow
	maxIntDigits     = 15   // digits of an unbounded integer: exact in a float64
	maxFracDigits    = 6    // digits after the point of a number
)

type kind uint8

const (
	kObject kind = iota + 1
	kArray
	kString
	kInteger
	kNumber
	kBoolean
	kNull
	kEnum  // enum or const: one of literal JSON values
	kAnyOf // one of several schemas
)

type prop struct {
	name string
	node *node
}

type node struct {
	kind               kind
	props              []prop   // kObject, in the schema's order
	items              *node    // kArray
	minItems, maxItems int      // kArray
	minLen, maxLen     int      // kString
	min, max           *int64   // kInteger
	literals           [][]byte // kEnum: minified JSON values
	anyOf              []*node  // kAnyOf
}

// Schema is a parsed schema of the subset.
type Schema struct {
	root     *node
	minified []byte
}

// Parse reads a JSON Schema of the subset.
func Parse(data []byte) (*Schema, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeOrdered(dec, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: data after the schema", ErrUnsupported)
	}
	p := parser{}
	root, err := p.node(v, 0)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, data); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	s := &Schema{root: root, minified: buf.Bytes()}
	if n := s.MaxBytes(); n > MaxAnswerBytes {
		return nil, fmt.Errorf("%w: answers of up to %d bytes, at most %d", ErrUnsupported, n, MaxAnswerBytes)
	}
	return s, nil
}

// JSON is the schema, minified: what Ollama's `format` takes.
func (s *Schema) JSON() json.RawMessage { return slices.Clone(s.minified) }

// MaxBytes is the longest answer the schema admits, in bytes. An engine
// generates at least one byte per token, so MaxBytes+1 tokens (the last
// one the end of generation) always suffice.
func (s *Schema) MaxBytes() int { return s.root.maxBytes() }

// ordered is a JSON object with its keys in document order.
type ordered []member

type member struct {
	key string
	val any
}

func (o ordered) get(k string) (any, bool) {
	for _, m := range o {
		if m.key == k {
			return m.val, true
		}
	}
	return nil, false
}

// decodeOrdered decodes one JSON value keeping object key order. Depth is
// bounded here too: the document is attacker-controlled (a device sends
// inline schemas).
func decodeOrdered(dec *json.Decoder, depth int) (any, error) {
	if depth > 2*MaxDepth+4 {
		return nil, errors.New("nested too deeply")
	}
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := t.(type) {
	case json.Delim:
		switch t {
		case '{':
			var o ordered
			for dec.More() {
				kt, err := dec.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				if _, dup := o.get(k); dup {
					return nil, fmt.Errorf("key %q repeated", k)
				}
				v, err := decodeOrdered(dec, depth+1)
				if err != nil {
					return nil, err
				}
				o = append(o, member{k, v})
			}
			_, err := dec.Token()
			return o, err
		case '[':
			a := []any{}
			for dec.More() {
				v, err := decodeOrdered(dec, depth+1)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := dec.Token()
			return a, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	}
	return t, nil
}

type parser struct{ nodes int }

// annotations are keywords that never constrain an answer.
var annotations = map[string]bool{
	"$schema": true, "$id": true, "title": true, "description": true, "$comment": true,
	"examples": true, "default": true, "required": true, "additionalProperties": true,
}

func (p *parser) node(v any, depth int) (*node, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("%w: nested deeper than %d", ErrUnsupported, MaxDepth)
	}
	if p.nodes++; p.nodes > MaxNodes {
		return nil, fmt.Errorf("%w: more than %d schemas", ErrUnsupported, MaxNodes)
	}
	o, ok := v.(ordered)
	if !ok {
		return nil, fmt.Errorf("%w: a schema must be an object", ErrUnsupported)
	}
	if ev, ok := o.get("enum"); ok {
		return p.enum(o, ev, "enum")
	}
	if cv, ok := o.get("const"); ok {
		return p.enum(o, []any{cv}, "const")
	}
	if av, ok := o.get("anyOf"); ok {
		return p.anyOf(o, av, depth)
	}
	tv, ok := o.get("type")
	if !ok {
		return nil, fmt.Errorf("%w: a schema needs type, enum, const or anyOf", ErrUnsupported)
	}
	typ, ok := tv.(string)
	if !ok {
		return nil, fmt.Errorf("%w: type must be one string", ErrUnsupported)
	}
	n := &node{}
	allowed := map[string]bool{"type": true}
	var err error
	switch typ {
	case "object":
		n.kind = kObject
		allowed["properties"] = true
		err = p.object(n, o, depth)
	case "array":
		n.kind = kArray
		allowed["items"], allowed["minItems"], allowed["maxItems"] = true, true, true
		err = p.array(n, o, depth)
	case "string":
		n.kind = kString
		allowed["minLength"], allowed["maxLength"] = true, true
		n.minLen, n.maxLen = 0, DefaultMaxLength
		if err = bound(o, "minLength", &n.minLen, MaxLengthLimit); err == nil {
			n.maxLen = max(n.maxLen, n.minLen)
			err = bound(o, "maxLength", &n.maxLen, MaxLengthLimit)
		}
		if err == nil && n.minLen > n.maxLen {
			err = fmt.Errorf("%w: minLength above maxLength", ErrUnsupported)
		}
	case "integer":
		n.kind = kInteger
		allowed["minimum"], allowed["maximum"] = true, true
		err = p.integer(n, o)
	case "number":
		n.kind = kNumber
	case "boolean":
		n.kind = kBoolean
	case "null":
		n.kind = kNull
	default:
		return nil, fmt.Errorf("%w: type %q", ErrUnsupported, typ)
	}
	if err != nil {
		return nil, err
	}
	for _, m := range o {
		if !allowed[m.key] && !annotations[m.key] {
			return nil, fmt.Errorf("%w: keyword %q (with type %s)", ErrUnsupported, m.key, typ)
		}
	}
	return n, nil
}

// bound reads a non-negative integer keyword at most limit into dst.
func bound(o ordered, key string, dst *int, limit int) error {
	v, ok := o.get(key)
	if !ok {
		return nil
	}
	num, ok := v.(json.Number)
	n, err := strconv.Atoi(string(num))
	if !ok || err != nil || n < 0 || n > limit {
		return fmt.Errorf("%w: %s must be an integer 0..%d", ErrUnsupported, key, limit)
	}
	*dst = n
	return nil
}

func (p *parser) object(n *node, o ordered, depth int) error {
	pv, ok := o.get("properties")
	if !ok {
		return nil
	}
	props, ok := pv.(ordered)
	if !ok {
		return fmt.Errorf("%w: properties must be an object", ErrUnsupported)
	}
	for _, m := range props {
		c, err := p.node(m.val, depth+1)
		if err != nil {
			return fmt.Errorf("property %q: %w", m.key, err)
		}
		n.props = append(n.props, prop{m.key, c})
	}
	if rv, ok := o.get("required"); ok {
		req, ok := rv.([]any)
		if !ok {
			return fmt.Errorf("%w: required must be a list", ErrUnsupported)
		}
		for _, r := range req {
			name, _ := r.(string)
			if !slices.ContainsFunc(n.props, func(p prop) bool { return p.name == name }) {
				return fmt.Errorf("%w: required %v is not a property", ErrUnsupported, r)
			}
		}
	}
	return nil
}

func (p *parser) array(n *node, o ordered, depth int) error {
	iv, ok := o.get("items")
	if !ok {
		return fmt.Errorf("%w: an array needs items", ErrUnsupported)
	}
	var err error
	if n.items, err = p.node(iv, depth+1); err != nil {
		return fmt.Errorf("items: %w", err)
	}
	n.minItems, n.maxItems = 0, DefaultMaxItems
	if err := bound(o, "minItems", &n.minItems, MaxItemsLimit); err != nil {
		return err
	}
	n.maxItems = max(n.maxItems, n.minItems)
	if err := bound(o, "maxItems", &n.maxItems, MaxItemsLimit); err != nil {
		return err
	}
	if n.minItems > n.maxItems {
		return fmt.Errorf("%w: minItems above maxItems", ErrUnsupported)
	}
	return nil
}

func (p *parser) integer(n *node, o ordered) error {
	get := func(key string) (*int64, error) {
		v, ok := o.get(key)
		if !ok {
			return nil, nil
		}
		num, _ := v.(json.Number)
		i, err := strconv.ParseInt(string(num), 10, 64)
		if err != nil || i < -999_999_999_999_999 || i > 999_999_999_999_999 {
			return nil, fmt.Errorf("%w: %s must be an integer of at most %d digits", ErrUnsupported, key, maxIntDigits)
		}
		return &i, nil
	}
	var err error
	if n.min, err = get("minimum"); err != nil {
		return err
	}
	if n.max, err = get("maximum"); err != nil {
		return err
	}
	switch {
	case n.min == nil && n.max == nil:
	case n.min != nil && n.max != nil:
		if *n.min > *n.max || *n.max-*n.min >= MaxIntRange {
			return fmt.Errorf("%w: integer range must hold 1..%d values", ErrUnsupported, MaxIntRange)
		}
	case n.min != nil && *n.min == 0:
	default:
		return fmt.Errorf("%w: an integer bound must be minimum 0 alone or both minimum and maximum", ErrUnsupported)
	}
	return nil
}

func (p *parser) enum(o ordered, ev any, key string) (*node, error) {
	vals, ok := ev.([]any)
	if !ok || len(vals) == 0 || len(vals) > MaxEnumValues {
		return nil, fmt.Errorf("%w: %s must list 1..%d values", ErrUnsupported, key, MaxEnumValues)
	}
	for _, m := range o {
		if m.key != key && m.key != "type" && !annotations[m.key] {
			return nil, fmt.Errorf("%w: keyword %q with %s", ErrUnsupported, m.key, key)
		}
	}
	n := &node{kind: kEnum}
	for _, v := range vals {
		switch v.(type) {
		case string, json.Number, bool, nil:
		default:
			return nil, fmt.Errorf("%w: %s values must be strings, numbers, booleans or null", ErrUnsupported, key)
		}
		b, err := marshal(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		if !slices.ContainsFunc(n.literals, func(l []byte) bool { return bytes.Equal(l, b) }) {
			n.literals = append(n.literals, b)
		}
	}
	return n, nil
}

func (p *parser) anyOf(o ordered, av any, depth int) (*node, error) {
	alts, ok := av.([]any)
	if !ok || len(alts) == 0 {
		return nil, fmt.Errorf("%w: anyOf must list schemas", ErrUnsupported)
	}
	for _, m := range o {
		if m.key != "anyOf" && !annotations[m.key] {
			return nil, fmt.Errorf("%w: keyword %q with anyOf", ErrUnsupported, m.key)
		}
	}
	n := &node{kind: kAnyOf}
	for i, a := range alts {
		c, err := p.node(a, depth+1)
		if err != nil {
			return nil, fmt.Errorf("anyOf[%d]: %w", i, err)
		}
		n.anyOf = append(n.anyOf, c)
	}
	return n, nil
}

func (n *node) maxBytes() int {
	switch n.kind {
	case kObject:
		b := 2 + max(len(n.props)-1, 0)
		for _, p := range n.props {
			key, _ := marshal(p.name)
			b += len(key) + 1 + p.node.maxBytes()
		}
		return b
	case kArray:
		return 2 + n.maxItems*n.items.maxBytes() + max(n.maxItems-1, 0)
	case kString:
		return 2 + 2*n.maxLen // a character is one ASCII byte, an escape 2
	case kInteger:
		if n.min != nil && n.max != nil {
			return max(len(strconv.FormatInt(*n.min, 10)), len(strconv.FormatInt(*n.max, 10)))
		}
		return 1 + maxIntDigits
	case kNumber:
		return 1 + maxIntDigits + 1 + maxFracDigits
	case kBoolean:
		return 5
	case kNull:
		return 4
	case kEnum:
		b := 0
		for _, l := range n.literals {
			b = max(b, len(l))
		}
		return b
	case kAnyOf:
		b := 0
		for _, a := range n.anyOf {
			b = max(b, a.maxBytes())
		}
		return b
	}
	return 0
}
