package daemon

import (
	"cmp"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpd-project/mcpd/backends"
	"github.com/mcpd-project/mcpd/daemon/chatstate"
	"github.com/mcpd-project/mcpd/serialproto"
)

// Kept conversations (docs/protocol.md §10, docs/caching.md): a session's
// chat history outlives the session for a device whose identity the
// daemon can check — so that a device asking with RESUME in its next
// HELLO continues its conversation, after a lost session or a restart of
// the daemon — and for nobody else: an unsigned device's id is only a
// claim, and handing its conversation to whoever claims the id would leak
// it.

// keyCheckLabel is what a signing key's fingerprint is taken over.
const keyCheckLabel = "mcpd kept conversation v1"

// chatOwner is who may resume the conversation of device id on peer p,
// "" for nobody: the holder of its signing key on any link; on a serial
// port, the device of that id on that port (a port has one device, at the
// end of a cable); on MQTT, the id the broker authenticated on that link;
// on UDP without a key, the id alone, only where policy trusts the
// network (ResumeUnsigned).
func chatOwner(p Peer, id string, key serialproto.Key, resumeUnsigned bool) (string, [16]byte) {
	switch {
	case !key.IsZero():
		return "key:" + id, key.Check(keyCheckLabel)
	case p.BoundDevice() != "":
		return "bound:" + p.LinkName() + "/" + id, [16]byte{}
	case p.ByteStream():
		return "port:" + p.LinkName() + "/" + id, [16]byte{}
	case resumeUnsigned:
		return "id:" + id, [16]byte{}
	}
	return "", [16]byte{}
}

// chatStore holds the conversations of ended sessions by owner, within
// Config.ChatBudget (least recently used out first), and counts the
// changes a save would see.
type chatStore struct {
	mu     sync.Mutex
	parked map[string]chatstate.Conversation
	bytes  int64

	gen    atomic.Int64 // bumped by every change of a kept or live conversation
	saveMu sync.Mutex   // one save at a time
	saved  int64        // gen when the file was last written or read (saveMu)
}

func (c *chatStore) changed() { c.gen.Add(1) }

// put keeps conv for its owner, replacing what the owner had, and drops
// the least recently used conversations beyond budget.
func (c *chatStore) put(conv chatstate.Conversation, budget int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parked == nil {
		c.parked = make(map[string]chatstate.Conversation)
	}
	if old, ok := c.parked[conv.Owner]; ok {
		c.bytes -= old.Size()
	}
	c.parked[conv.Owner] = conv
	c.bytes += conv.Size()
	for c.bytes > budget && len(c.parked) > 0 {
		var oldest string
		for k, v := range c.parked {
			if oldest == "" || v.LastUsed.Before(c.parked[oldest].LastUsed) {
				oldest = k
			}
		}
		c.bytes -= c.parked[oldest].Size()
		delete(c.parked, oldest)
	}
	c.changed()
}

// take removes and returns owner's kept conversation.
func (c *chatStore) take(owner string) (chatstate.Conversation, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conv, ok := c.parked[owner]
	if ok {
		delete(c.parked, owner)
		c.bytes -= conv.Size()
		c.changed()
	}
	return conv, ok
}

func (c *chatStore) all() []chatstate.Conversation {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]chatstate.Conversation, 0, len(c.parked))
	for _, v := range c.parked {
		out = append(out, v)
	}
	return out
}

// takeHistory moves the session's history out (nil when it has none).
func (s *session) takeHistory() []backends.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.history
	s.history = nil
	if len(h) > 0 {
		s.d.chats.changed()
	}
	return h
}

// park keeps the history of a session that ended for its owner to resume.
func (s *session) park() {
	if s.owner == "" {
		return
	}
	if h := s.takeHistory(); len(h) > 0 {
		s.d.chats.put(s.conversationRecord(h), s.d.conf().ChatBudget)
	}
}

func (s *session) conversationRecord(h []backends.Message) chatstate.Conversation {
	return chatstate.Conversation{Owner: s.owner, DeviceID: s.deviceID, KeyCheck: s.keyCheck, LastUsed: s.lastSeen(), Messages: h}
}

// resume gives a new session the conversation kept for its owner when the
// device asked for it (want: RESUME in its HELLO): that of the session
// it replaces on the same peer, else the one kept since a session ended
// (or loaded at start), else that of another live session of the same
// owner (a device back on a new UDP port). Without RESUME whatever was
// kept for the owner is dropped: the device starts a new conversation,
// and a later RESUME must not bring back an older one. Called before the
// WELCOME goes out, so the first INFER sees the history.
func (s *session) resume(want bool, old *session) {
	if s.owner == "" {
		return
	}
	same := func(o *session) bool { return o != nil && o != s && o.owner == s.owner && o.keyCheck == s.keyCheck }
	var h []backends.Message
	if same(old) {
		h = old.takeHistory()
	}
	if kept, ok := s.d.chats.take(s.owner); ok && h == nil && kept.KeyCheck == s.keyCheck {
		h = kept.Messages
	}
	if !want {
		return
	}
	if h == nil {
		live := s.d.sessions.filter(same)
		slices.SortFunc(live, func(a, b *session) int { return b.lastSeen().Compare(a.lastSeen()) })
		for _, o := range live {
			if h = o.takeHistory(); h != nil {
				break
			}
		}
	}
	if h == nil {
		return
	}
	s.mu.Lock()
	s.history = lastTurns(h, s.d.conf().MaxHistory)
	n := len(s.history)
	s.mu.Unlock()
	s.resumed.Store(true)
	s.d.chats.changed()
	s.d.remoteLog(slog.LevelInfo, "conversation resumed", "device", s.deviceID, "peer", s.peer.Key(), "messages", n)
}

// chatSnapshot is what a save writes: the live sessions' and the kept
// conversations, one per owner, most recently used first, within budget.
func (d *Daemon) chatSnapshot(budget int64) []chatstate.Conversation {
	convs := d.chats.all()
	for _, s := range d.sessions.filter(func(s *session) bool { return s.owner != "" }) {
		s.mu.Lock()
		h := slices.Clone(s.history)
		s.mu.Unlock()
		if len(h) > 0 {
			convs = append(convs, s.conversationRecord(h))
		}
	}
	slices.SortStableFunc(convs, func(a, b chatstate.Conversation) int { return b.LastUsed.Compare(a.LastUsed) })
	seen := make(map[string]bool, len(convs))
	size := int64(64)
	out := convs[:0]
	for _, c := range convs {
		if seen[c.Owner] || size+c.Size() > budget || len(out) == chatstate.MaxRecords {
			continue
		}
		seen[c.Owner] = true
		size += c.Size()
		out = append(out, c)
	}
	return out
}

// SaveChats writes the conversations devices may resume to ChatFile when
// any changed since the last save (atomically: chatstate.Save). The
// service calls it at reload; Run at its end and the saver every
// SaveInterval (saver.go).
func (d *Daemon) SaveChats() error {
	cfg := d.conf()
	if cfg.ChatFile == "" {
		return nil
	}
	d.chats.saveMu.Lock()
	defer d.chats.saveMu.Unlock()
	gen := d.chats.gen.Load()
	if gen == d.chats.saved {
		return nil
	}
	start := time.Now()
	convs := d.chatSnapshot(cfg.ChatBudget)
	n, err := chatstate.Save(cfg.ChatFile, chatstate.Identity(cfg.ChatModel), convs)
	if err != nil {
		d.log.Warn("conversations not saved", "file", cfg.ChatFile, "err", err)
		return err
	}
	d.chats.saved = gen
	d.log.Info("conversations saved", "file", cfg.ChatFile, "conversations", len(convs), "bytes", n,
		"ms", time.Since(start).Milliseconds())
	return nil
}

// loadChats keeps the conversations of the file saved by the last run for
// their devices to resume. A file that is not usable — corrupt,
// truncated, another version or model — is refused with one log line:
// the devices start new conversations.
func (d *Daemon) loadChats() {
	cfg := d.conf()
	if cfg.ChatFile == "" {
		return
	}
	convs, err := chatstate.Load(cfg.ChatFile, chatstate.Identity(cfg.ChatModel))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return
	case err != nil:
		d.log.Warn("saved conversations refused: devices start new ones", "file", cfg.ChatFile, "err", err)
		return
	}
	slices.SortStableFunc(convs, func(a, b chatstate.Conversation) int {
		return cmp.Compare(a.LastUsed.UnixNano(), b.LastUsed.UnixNano())
	})
	for _, c := range convs { // oldest first: the budget drops those
		d.chats.put(c, cfg.ChatBudget)
	}
	d.chats.saveMu.Lock()
	d.chats.saved = d.chats.gen.Load() // the file holds them
	d.chats.saveMu.Unlock()
	d.log.Info("saved conversations loaded", "file", cfg.ChatFile, "conversations", len(convs))
}
