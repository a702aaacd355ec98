package grammar

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Validate reports whether answer is what the schema's grammar admits:
// 7-bit ASCII, minified JSON, every property in the schema's order and no
// other, within every bound. It is stricter than JSON Schema validation (it
// also checks the form) and is what tests hold engines to.
func (s *Schema) Validate(answer []byte) error {
	for _, c := range answer {
		if c >= utf8.RuneSelf {
			return fmt.Errorf("%w: not 7-bit ASCII", ErrInvalid)
		}
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, answer); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if !bytes.Equal(compact.Bytes(), answer) {
		return fmt.Errorf("%w: not minified", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(answer))
	dec.UseNumber()
	v, err := decodeOrdered(dec, -1<<20) // depth is bounded by the schema below
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: data after the value", ErrInvalid)
	}
	return s.root.check(v, "$")
}

func (n *node) check(v any, path string) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalid, path, fmt.Sprintf(format, a...))
	}
	switch n.kind {
	case kObject:
		o, ok := v.(ordered)
		if !ok {
			return bad("want an object")
		}
		if len(o) != len(n.props) {
			return bad("%d properties, want %d", len(o), len(n.props))
		}
		for i, p := range n.props {
			if o[i].key != p.name {
				return bad("property %d is %q, want %q", i, o[i].key, p.name)
			}
			if err := p.node.check(o[i].val, path+"."+p.name); err != nil {
				return err
			}
		}
	case kArray:
		a, ok := v.([]any)
		if !ok {
			return bad("want an array")
		}
		if len(a) < n.minItems || len(a) > n.maxItems {
			return bad("%d items, want %d..%d", len(a), n.minItems, n.maxItems)
		}
		for i, it := range a {
			if err := n.items.check(it, path+"["+strconv.Itoa(i)+"]"); err != nil {
				return err
			}
		}
	case kString:
		str, ok := v.(string)
		if !ok {
			return bad("want a string")
		}
		if c := utf8.RuneCountInString(str); c < n.minLen || c > n.maxLen {
			return bad("%d characters, want %d..%d", c, n.minLen, n.maxLen)
		}
	case kInteger, kNumber:
		num, ok := v.(json.Number)
		if !ok {
			return bad("want a number")
		}
		s := strings.TrimPrefix(string(num), "-")
		intPart, frac, hasFrac := strings.Cut(s, ".")
		switch {
		case strings.ContainsAny(s, "eE"):
			return bad("exponent in %s", num)
		case len(intPart) > maxIntDigits:
			return bad("%s has more than %d digits", num, maxIntDigits)
		case n.kind == kInteger && hasFrac:
			return bad("%s is not an integer", num)
		case len(frac) > maxFracDigits:
			return bad("%s has more than %d decimals", num, maxFracDigits)
		}
		if n.kind == kInteger {
			i, err := strconv.ParseInt(string(num), 10, 64)
			if err != nil {
				return bad("%s: %v", num, err)
			}
			if (n.min != nil && i < *n.min) || (n.max != nil && i > *n.max) {
				return bad("%d out of range", i)
			}
		}
	case kBoolean:
		if _, ok := v.(bool); !ok {
			return bad("want a boolean")
		}
	case kNull:
		if v != nil {
			return bad("want null")
		}
	case kEnum:
		b, err := marshal(v)
		if err != nil {
			return bad("%v", err)
		}
		for _, l := range n.literals {
			if bytes.Equal(l, b) {
				return nil
			}
		}
		return bad("%s is not one of the values", b)
	case kAnyOf:
		var errs []error
		for _, a := range n.anyOf {
			err := a.check(v, path)
			if err == nil {
				return nil
			}
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}
	return nil
}
