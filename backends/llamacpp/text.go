package llamacpp

import (
	"bytes"
	"strings"
	"unicode/utf8"

	"github.com/mcpd-project/mcpd/backends"
)

// PlainTemplate is the prompt format for models without a usable chat
// template: one "Role: content" line per message, then "Assistant:".
func PlainTemplate(msgs []backends.Message) string {
	var b strings.Builder
	for _, m := range msgs {
		writePlainRole(&b, m)
		b.WriteString(m.Content)
		b.WriteString("\n")
	}
	b.WriteString("Assistant:")
	return b.String()
}

// writePlainRole writes the "Role: " that starts m's line. An answer that
// carries its generated tokens follows the colon directly, as it followed
// the "Assistant:" cue it was generated after: the conversation's next
// prompt then holds what the model saw and generated (prompt.go).
func writePlainRole(b *strings.Builder, m backends.Message) {
	role := string(m.Role)
	if role == "" {
		role = string(backends.RoleUser)
	}
	b.WriteString(strings.ToUpper(role[:1]) + role[1:])
	b.WriteString(":")
	if m.Role != backends.RoleAssistant || len(m.Tokens) == 0 {
		b.WriteString(" ")
	}
}

// textStream turns token bytes into emitted text: it holds back an
// incomplete UTF-8 character and any tail that could begin a stop string,
// and replaces invalid bytes (random or broken models produce them) with
// U+FFFD so devices only ever receive valid UTF-8.
type textStream struct {
	stops   []string
	raw     []byte // bytes not yet forming complete characters
	pending string // complete text held back for stop matching
}

func newTextStream(stops []string) *textStream {
	s := &textStream{}
	for _, st := range stops {
		if st != "" {
			s.stops = append(s.stops, st)
		}
	}
	return s
}

// add takes a token's bytes and returns the text safe to emit, and whether
// a stop string matched (the text before it is returned, the rest dropped).
func (s *textStream) add(piece []byte) ([]byte, bool) {
	s.raw = append(s.raw, piece...)
	cut := completePrefix(s.raw)
	s.pending += string(bytes.ToValidUTF8(s.raw[:cut], []byte("\uFFFD")))
	s.raw = append(s.raw[:0], s.raw[cut:]...)
	for _, st := range s.stops {
		if i := strings.Index(s.pending, st); i >= 0 {
			out := s.pending[:i]
			s.pending = ""
			return []byte(out), true
		}
	}
	hold := 0
	for _, st := range s.stops {
		for n := min(len(st)-1, len(s.pending)); n > hold; n-- {
			if strings.HasSuffix(s.pending, st[:n]) {
				hold = n
				break
			}
		}
	}
	out := s.pending[:len(s.pending)-hold]
	s.pending = s.pending[len(s.pending)-hold:]
	return []byte(out), false
}

// flush returns everything held back, at the end of generation.
func (s *textStream) flush() []byte {
	out := s.pending + string(bytes.ToValidUTF8(s.raw, []byte("\uFFFD")))
	s.pending, s.raw = "", s.raw[:0]
	return []byte(out)
}

// completePrefix is the length of b without a trailing incomplete (but so
// far valid) UTF-8 sequence, which the next token will complete.
func completePrefix(b []byte) int {
	for i := len(b) - 1; i >= 0 && i > len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				return i
			}
			return len(b)
		}
	}
	return len(b)
}
