package serialproto

import (
	"encoding/binary"
	"unicode/utf8"
)

// The session messages: HELLO, WELCOME, PING, PONG, BYE and STATUS (§11).

// Hello opens a session (device → daemon).
type Hello struct {
	MinVersion, MaxVersion uint8
	MaxData                uint16 // largest data field the device accepts
	Features               uint16
	Window                 uint8  // chunks the device can buffer
	BootNonce              uint32 // fresh per new HELLO
	DeviceID               string
}

func (*Hello) Command() Command { return CmdHello }

func (m *Hello) AppendBody(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	dst = append(dst, m.MinVersion, m.MaxVersion)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxData)
	dst = binary.BigEndian.AppendUint16(dst, m.Features)
	dst = append(dst, m.Window)
	dst = binary.BigEndian.AppendUint32(dst, m.BootNonce)
	return append(dst, m.DeviceID...), nil
}

func (m *Hello) UnmarshalBody(b []byte) error {
	if len(b) < 12 {
		return malformed(CmdHello, "%d bytes, need at least 12", len(b))
	}
	*m = Hello{
		MinVersion: b[0], MaxVersion: b[1],
		MaxData:   binary.BigEndian.Uint16(b[2:]),
		Features:  binary.BigEndian.Uint16(b[4:]),
		Window:    b[6],
		BootNonce: binary.BigEndian.Uint32(b[7:]),
		DeviceID:  string(b[11:]),
	}
	return m.validate()
}

func (m *Hello) validate() error {
	switch {
	case m.MinVersion == 0 || m.MinVersion > m.MaxVersion:
		return malformed(CmdHello, "version range %d..%d", m.MinVersion, m.MaxVersion)
	case m.MaxData < MinDataLimit || m.MaxData > MaxData:
		return malformed(CmdHello, "max_data %d outside %d..%d", m.MaxData, MinDataLimit, MaxData)
	case m.Window == 0:
		return malformed(CmdHello, "window 0")
	case m.Features&FeatureSign != 0 && m.MaxData < MinSignedDataLimit:
		return malformed(CmdHello, "max_data %d too small for signed frames (at least %d)", m.MaxData, MinSignedDataLimit)
	case !ValidDeviceID(m.DeviceID):
		return malformed(CmdHello, "device id %q: 1..64 of [A-Za-z0-9._:-]", m.DeviceID)
	}
	return nil
}

// ValidDeviceID reports whether id is 1..64 bytes of [A-Za-z0-9._:-].
func ValidDeviceID(id string) bool {
	if len(id) == 0 || len(id) > MaxDeviceIDLen {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// Welcome accepts a session (daemon → device).
type Welcome struct {
	Version     uint8
	MaxData     uint16
	Features    uint16
	Window      uint8
	HeartbeatMS uint16
	MaxMessage  uint16
	DaemonNonce uint32
}

func (*Welcome) Command() Command { return CmdWelcome }

func (m *Welcome) AppendBody(dst []byte) ([]byte, error) {
	if err := m.validate(); err != nil {
		return dst, err
	}
	dst = append(dst, m.Version)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxData)
	dst = binary.BigEndian.AppendUint16(dst, m.Features)
	dst = append(dst, m.Window)
	dst = binary.BigEndian.AppendUint16(dst, m.HeartbeatMS)
	dst = binary.BigEndian.AppendUint16(dst, m.MaxMessage)
	return binary.BigEndian.AppendUint32(dst, m.DaemonNonce), nil
}

func (m *Welcome) UnmarshalBody(b []byte) error {
	if len(b) != 14 {
		return malformed(CmdWelcome, "%d bytes, want 14", len(b))
	}
	*m = Welcome{
		Version:     b[0],
		MaxData:     binary.BigEndian.Uint16(b[1:]),
		Features:    binary.BigEndian.Uint16(b[3:]),
		Window:      b[5],
		HeartbeatMS: binary.BigEndian.Uint16(b[6:]),
		MaxMessage:  binary.BigEndian.Uint16(b[8:]),
		DaemonNonce: binary.BigEndian.Uint32(b[10:]),
	}
	return m.validate()
}

func (m *Welcome) validate() error {
	switch {
	case m.Version == 0:
		return malformed(CmdWelcome, "version 0")
	case m.MaxData < MinDataLimit || m.MaxData > MaxData:
		return malformed(CmdWelcome, "max_data %d outside %d..%d", m.MaxData, MinDataLimit, MaxData)
	case m.MaxMessage > MaxMessageLimit:
		return malformed(CmdWelcome, "max_message %d above %d", m.MaxMessage, MaxMessageLimit)
	}
	return nil
}

// Ping is a heartbeat; Data (0..8 bytes) comes back in the Pong.
type Ping struct{ Data []byte }

func (*Ping) Command() Command { return CmdPing }

func (m *Ping) AppendBody(dst []byte) ([]byte, error) {
	return appendOpaque(dst, CmdPing, m.Data)
}

func (m *Ping) UnmarshalBody(b []byte) error { return unmarshalOpaque(&m.Data, CmdPing, b) }

// Pong answers a Ping with its data.
type Pong struct{ Data []byte }

func (*Pong) Command() Command { return CmdPong }

func (m *Pong) AppendBody(dst []byte) ([]byte, error) {
	return appendOpaque(dst, CmdPong, m.Data)
}

func (m *Pong) UnmarshalBody(b []byte) error { return unmarshalOpaque(&m.Data, CmdPong, b) }

func appendOpaque(dst []byte, cmd Command, p []byte) ([]byte, error) {
	if len(p) > MaxPingData {
		return dst, malformed(cmd, "%d bytes, at most %d", len(p), MaxPingData)
	}
	return append(dst, p...), nil
}

func unmarshalOpaque(dst *[]byte, cmd Command, b []byte) error {
	if len(b) > MaxPingData {
		return malformed(cmd, "%d bytes, at most %d", len(b), MaxPingData)
	}
	*dst = b
	return nil
}

// Status asks the daemon for a StatusReply.
type Status struct{}

func (*Status) Command() Command                      { return CmdStatus }
func (*Status) AppendBody(dst []byte) ([]byte, error) { return appendEmpty(dst) }
func (*Status) UnmarshalBody(b []byte) error          { return unmarshalEmpty(CmdStatus, b) }

// Bye closes a session.
type Bye struct{}

func (*Bye) Command() Command                      { return CmdBye }
func (*Bye) AppendBody(dst []byte) ([]byte, error) { return appendEmpty(dst) }
func (*Bye) UnmarshalBody(b []byte) error          { return unmarshalEmpty(CmdBye, b) }

// Daemon states in STATUS_REPLY.
const (
	StateReady       uint8 = 0
	StateLoading     uint8 = 1
	StateDegraded    uint8 = 2
	StateUnavailable uint8 = 3
	StateDraining    uint8 = 4
)

// StatusReply reports the daemon's backend, model and load, and in the
// extended layout (FeatureStatusExt, docs/protocol.md §11.11) its cache
// figures.
type StatusReply struct {
	State   uint8
	LoadPct uint8
	Queue   uint8
	Backend string
	Model   string
	// Extended selects the extended layout: a marker byte, both names
	// length-prefixed, then fields (type, length, value) that receivers
	// skip when they do not know them. Sent only to a device that asked
	// for FeatureStatusExt; a decoder knows it by the marker.
	Extended bool
	// KV is the engine's KV cache reuse (field KV_CACHE), Responses the
	// response cache (RESPONSE_CACHE); nil: the field is absent (no such
	// cache, or no room for it). Extended layout only.
	KV, Responses *CacheFigures
}

// CacheFigures are one cache's counters since the daemon started and its
// size now, as a STATUS_REPLY field carries them (counters saturate).
type CacheFigures struct {
	Hits, Misses, Evictions uint32
	Bytes                   uint64
}

// Fields of the extended STATUS_REPLY (§11.11).
const (
	StatusFieldKVCache       uint8 = 0x01
	StatusFieldResponseCache uint8 = 0x02
	// statusExtMarker in byte 3 marks the extended layout: as the basic
	// layout's backend_len it would need 255 bytes of backend after the
	// 4-byte header, more than a body holds, so a basic decoder refuses
	// the extended layout instead of misreading it.
	statusExtMarker   = 0xFF
	cacheFiguresLen   = 20
	statusFieldHeader = 2
)

func (*StatusReply) Command() Command { return CmdStatusReply }

// Fit cuts the backend and model names, at character boundaries, so the
// body fits limit bytes; in the extended layout the fields come first
// (whole, or dropped when even empty names leave no room for them).
// docs/protocol.md §11.11.
func (m *StatusReply) Fit(limit int) {
	if !m.Extended {
		m.Backend = cutUTF8(m.Backend, min(255, limit-4))
		m.Model = cutUTF8(m.Model, limit-4-len(m.Backend))
		return
	}
	room := limit - 6 // state, load, queue, marker, two name lengths
	for _, f := range []**CacheFigures{&m.KV, &m.Responses} {
		if *f == nil {
			continue
		}
		if room < statusFieldHeader+cacheFiguresLen {
			*f = nil
			continue
		}
		room -= statusFieldHeader + cacheFiguresLen
	}
	m.Backend = cutUTF8(m.Backend, min(255, room))
	m.Model = cutUTF8(m.Model, min(255, room-len(m.Backend)))
}

func (m *StatusReply) AppendBody(dst []byte) ([]byte, error) {
	if m.LoadPct > 100 || !utf8.ValidString(m.Backend) || !utf8.ValidString(m.Model) {
		return dst, malformed(CmdStatusReply, "load %d%% (≤ 100) and UTF-8 names", m.LoadPct)
	}
	if m.Extended {
		return m.appendExtended(dst)
	}
	if m.KV != nil || m.Responses != nil {
		return dst, malformed(CmdStatusReply, "cache figures need the extended layout")
	}
	if 4+len(m.Backend)+len(m.Model) > MaxData { // so backend_len < statusExtMarker
		return dst, malformed(CmdStatusReply, "names of ≤ %d bytes in all", MaxData-4)
	}
	dst = append(dst, m.State, m.LoadPct, m.Queue, byte(len(m.Backend)))
	return append(append(dst, m.Backend...), m.Model...), nil
}

func (m *StatusReply) appendExtended(dst []byte) ([]byte, error) {
	n := 6 + len(m.Backend) + len(m.Model)
	for _, f := range []*CacheFigures{m.KV, m.Responses} {
		if f != nil {
			n += statusFieldHeader + cacheFiguresLen
		}
	}
	if len(m.Backend) > 255 || len(m.Model) > 255 || n > MaxData {
		return dst, malformed(CmdStatusReply, "%d bytes, above %d (names ≤ 255 bytes each)", n, MaxData)
	}
	dst = append(dst, m.State, m.LoadPct, m.Queue, statusExtMarker, byte(len(m.Backend)))
	dst = append(append(dst, m.Backend...), byte(len(m.Model)))
	dst = append(dst, m.Model...)
	for i, f := range []*CacheFigures{m.KV, m.Responses} {
		if f == nil {
			continue
		}
		dst = append(dst, []uint8{StatusFieldKVCache, StatusFieldResponseCache}[i], cacheFiguresLen)
		dst = binary.BigEndian.AppendUint32(dst, f.Hits)
		dst = binary.BigEndian.AppendUint32(dst, f.Misses)
		dst = binary.BigEndian.AppendUint32(dst, f.Evictions)
		dst = binary.BigEndian.AppendUint64(dst, f.Bytes)
	}
	return dst, nil
}

func (m *StatusReply) UnmarshalBody(b []byte) error {
	if len(b) < 4 || len(b) > MaxData {
		return malformed(CmdStatusReply, "%d bytes, outside its fields' 4..%d", len(b), MaxData)
	}
	*m = StatusReply{State: b[0], LoadPct: b[1], Queue: b[2]}
	if b[3] == statusExtMarker {
		if err := m.unmarshalExtended(b[4:]); err != nil {
			return err
		}
	} else {
		n := 4 + int(b[3])
		if len(b) < n {
			return malformed(CmdStatusReply, "backend of %d bytes overruns the body", b[3])
		}
		m.Backend, m.Model = string(b[4:n]), string(b[n:])
	}
	if m.LoadPct > 100 {
		return malformed(CmdStatusReply, "load %d%% above 100", m.LoadPct)
	}
	if !utf8.ValidString(m.Backend) || !utf8.ValidString(m.Model) {
		return malformed(CmdStatusReply, "names are not UTF-8")
	}
	return nil
}

// unmarshalExtended reads what follows the marker: the two names, then
// the fields; unknown ones are skipped, a known one must have its size and
// come once.
func (m *StatusReply) unmarshalExtended(b []byte) error {
	m.Extended = true
	name := func() (string, bool) {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return "", false
		}
		s := string(b[1 : 1+b[0]])
		b = b[1+int(b[0]):]
		return s, true
	}
	var ok bool
	if m.Backend, ok = name(); !ok {
		return malformed(CmdStatusReply, "backend overruns the body")
	}
	if m.Model, ok = name(); !ok {
		return malformed(CmdStatusReply, "model overruns the body")
	}
	for len(b) > 0 {
		if len(b) < statusFieldHeader || len(b) < statusFieldHeader+int(b[1]) {
			return malformed(CmdStatusReply, "field 0x%02x overruns the body", b[0])
		}
		typ, v := b[0], b[statusFieldHeader:statusFieldHeader+int(b[1])]
		b = b[statusFieldHeader+len(v):]
		var dst **CacheFigures
		switch typ {
		case StatusFieldKVCache:
			dst = &m.KV
		case StatusFieldResponseCache:
			dst = &m.Responses
		default:
			continue // a newer daemon's field
		}
		if len(v) != cacheFiguresLen || *dst != nil {
			return malformed(CmdStatusReply, "field 0x%02x: %d bytes (want %d, once)", typ, len(v), cacheFiguresLen)
		}
		*dst = &CacheFigures{
			Hits: binary.BigEndian.Uint32(v), Misses: binary.BigEndian.Uint32(v[4:]),
			Evictions: binary.BigEndian.Uint32(v[8:]), Bytes: binary.BigEndian.Uint64(v[12:]),
		}
	}
	return nil
}
