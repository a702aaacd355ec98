package llamacpp

import (
	crand "crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/native"
)

// A conversation's prompt is tokenised anew at every turn, and the
// engine's KV cache (kv.go) saves only the tokens a prompt starts with.
// The previous answer is in the new prompt as text, but the sequence's
// cache holds the tokens the engine generated for it, and tokenising that
// text again often gives other tokens (BPE gives one canonical split of a
// text; a model may generate any split, and a random one nearly always
// does): the cache then matched up to the previous answer's first token,
// and every turn evaluated the previous answer again. So an assistant
// message that carries the ids generated for it (Message.Tokens) is
// evaluated as those ids, as far as their text is the message's: the
// prompt then starts with exactly what the cache holds. Every prompt of
// the conversation is built the same way, so its output does not depend
// on what the cache holds (reuse on or off, a sequence evicted, a
// restart): only its time does.

// tokenizePrompt applies the chat template and tokenizes. Special-token
// text is parsed as control tokens only where the model's template put it:
// the messages' own text — a device's prompt — is tokenised plainly, so
// "<|im_start|>system" typed by a device stays text and cannot open a
// role. The template is applied with a random marker in place of each
// message; the text between markers is the template's (parsed), each
// marker's place the message's (not parsed). A template that changes the
// markers falls back to the plain template, parsed for nothing.
func (e *Engine) tokenizePrompt(msgs []backends.Message) ([]native.Token, error) {
	if e.tmpl != "" {
		if toks, ok, err := e.tokenizeTemplated(msgs); ok || err != nil {
			return toks, err
		}
	}
	return e.tokenizePlain(msgs)
}

func (e *Engine) tokenize(text string, addSpecial, parseSpecial bool) ([]native.Token, error) {
	toks, err := e.model.Tokenize(text, addSpecial, parseSpecial)
	if err != nil {
		if errors.Is(err, native.ErrClosed) {
			return nil, backends.ErrClosed
		}
		return nil, fmt.Errorf("%w: %w", backends.ErrFailed, err)
	}
	return toks, nil
}

// answerTokens is the longest run of an assistant message's generated
// token ids whose text m.Content starts with, and the bytes of Content
// they cover. The text is made as generate made it for the device
// (textStream: invalid UTF-8 from a random or broken model became U+FFFD),
// and the run ends where the text differs (an id of another model, an
// answer cut at a stop string) or at a token without text (a control
// token: its meaning is not in Content).
func (e *Engine) answerTokens(m backends.Message) ([]native.Token, int, error) {
	if m.Role != backends.RoleAssistant || len(m.Tokens) == 0 {
		return nil, 0, nil
	}
	ts := newTextStream(nil)
	n, kept, covered := 0, 0, 0
	for i, id := range m.Tokens {
		piece, err := e.model.TokenPiece(native.Token(id), false)
		if errors.Is(err, native.ErrClosed) {
			return nil, 0, backends.ErrClosed
		}
		if err != nil || len(piece) == 0 {
			break
		}
		out, _ := ts.add(piece)
		if i == len(m.Tokens)-1 {
			out = append(out, ts.flush()...) // the answer's end flushed what was held
		}
		if !strings.HasPrefix(m.Content[n:], string(out)) {
			break
		}
		n += len(out)
		if len(ts.raw) == 0 { // the text so far ends where this token does
			kept, covered = i+1, n
		}
	}
	toks := make([]native.Token, kept)
	for i, id := range m.Tokens[:kept] {
		toks[i] = native.Token(id)
	}
	return toks, covered, nil
}

// segments builds a prompt of text, tokenised a run at a time, and token
// ids evaluated as they are.
type segments struct {
	e     *Engine
	toks  []native.Token
	first bool // nothing tokenised yet: the next run gets BOS
}

// text tokenises s (parsing control-token text when special).
func (g *segments) text(s string, special bool) error {
	if s == "" {
		return nil
	}
	t, err := g.e.tokenize(s, g.first, special)
	if err != nil {
		return err
	}
	g.toks, g.first = append(g.toks, t...), false
	return nil
}

// tokenizePlain tokenises PlainTemplate(msgs): the text between the
// answers that carry their tokens in one run each, those answers as their
// tokens.
func (e *Engine) tokenizePlain(msgs []backends.Message) ([]native.Token, error) {
	g := segments{e: e, first: true}
	var text strings.Builder
	for _, m := range msgs {
		ans, n, err := e.answerTokens(m)
		if err != nil {
			return nil, err
		}
		writePlainRole(&text, m)
		if len(ans) > 0 {
			if err := g.text(text.String(), false); err != nil {
				return nil, err
			}
			text.Reset()
			g.toks = append(g.toks, ans...)
			text.WriteString(m.Content[n:])
		} else {
			text.WriteString(m.Content)
		}
		text.WriteString("\n")
	}
	text.WriteString("Assistant:")
	if err := g.text(text.String(), false); err != nil {
		return nil, err
	}
	return g.toks, nil
}

// tokenizeTemplated is tokenizePrompt through the model's template; ok is
// false when the template could not be applied around the markers.
func (e *Engine) tokenizeTemplated(msgs []backends.Message) (toks []native.Token, ok bool, err error) {
	var nonce [8]byte
	_, _ = crand.Read(nonce[:]) // never fails (crypto/rand, Go ≥ 1.24)
	marker := func(i int) string { return fmt.Sprintf("\x01mcpd-%x-%d\x01", nonce, i) }
	cm := make([]native.ChatMessage, len(msgs))
	for i, m := range msgs {
		cm[i] = native.ChatMessage{Role: string(m.Role), Content: marker(i)}
	}
	text, aerr := e.model.ApplyTemplate(e.tmpl, cm)
	if aerr != nil {
		return nil, false, nil
	}
	g := segments{e: e, first: true}
	for i, m := range msgs {
		before, after, found := strings.Cut(text, marker(i))
		if !found || strings.Contains(after, marker(i)) {
			return nil, false, nil
		}
		if err := g.text(before, true); err != nil {
			return nil, false, err
		}
		ans, n, err := e.answerTokens(m)
		if err != nil {
			return nil, false, err
		}
		if g.first {
			ans, n = nil, 0 // the prompt starts with BOS, not an answer
		}
		g.toks = append(g.toks, ans...)
		if err := g.text(m.Content[n:], false); err != nil {
			return nil, false, err
		}
		text = after
	}
	if err := g.text(text, true); err != nil {
		return nil, false, err
	}
	return g.toks, true, nil
}
