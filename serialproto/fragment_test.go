package serialproto

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1000, 0)

func TestFragmentsSizes(t *testing.T) {
	for _, tc := range []struct {
		body, piece, wantCount int
	}{
		{body: 2, piece: 254, wantCount: 1}, // a short prompt: one fragment, still with its CRC-32C
		{body: 250, piece: 254, wantCount: 1},
		{body: 251, piece: 254, wantCount: 2}, // 255 bytes with the CRC
		{body: 16384, piece: 254, wantCount: 65},
		{body: 100, piece: 30, wantCount: 4}, // 104 bytes with the CRC
		{body: 116, piece: 30, wantCount: 4}, // exactly 120
		{body: 117, piece: 30, wantCount: 5},
	} {
		body := bytes.Repeat([]byte{'z'}, tc.body)
		datas, err := Fragments(body, tc.piece)
		if err != nil {
			t.Fatal(err)
		}
		if len(datas) != tc.wantCount {
			t.Errorf("body %d piece %d: %d frames, want %d", tc.body, tc.piece, len(datas), tc.wantCount)
			continue
		}
		for i, d := range datas {
			if len(d) > MaxData {
				t.Errorf("data field %d is %d bytes", i, len(d))
			}
			if int(d[0]) != i || int(d[1]) != len(datas) {
				t.Errorf("fragment %d header %d/%d", i, d[0], d[1])
			}
			if i < len(datas)-1 && len(d)-2 != tc.piece {
				t.Errorf("piece %d has %d bytes", i, len(d)-2)
			}
		}
		r := NewReassembler(ReassemblerConfig{MaxMessage: MaxMessageLimit})
		var got []byte
		for _, d := range datas {
			got, _, err = r.Add(t0, CmdInfer, 1, d)
		}
		if err != nil || !bytes.Equal(got, body) {
			t.Errorf("body %d piece %d: reassembled %d bytes, %v", tc.body, tc.piece, len(got), err)
		}
	}
	if _, err := Fragments(make([]byte, 255*254), 254); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversize body: %v", err)
	}
	if _, err := Fragments([]byte("x"), 0); !errors.Is(err, ErrBadPieceSize) {
		t.Fatalf("piece 0: %v", err)
	}
}

func fragmentsOf(t *testing.T, body []byte, piece int) [][]byte {
	t.Helper()
	datas, err := Fragments(body, piece)
	if err != nil || len(datas) < 2 {
		t.Fatalf("Fragments: %v, %d fragments", err, len(datas))
	}
	return datas
}

func TestReassemblerOrders(t *testing.T) {
	body := []byte(strings.Repeat("The quick brown fox. ", 40))
	datas := fragmentsOf(t, body, 60)
	n := len(datas)
	orders := map[string][]int{
		"in order":   seqInts(n),
		"reversed":   reversed(seqInts(n)),
		"duplicates": append(append([]int{0, 0, 1}, seqInts(n)[1:]...), 2),
	}
	for name, order := range orders {
		r := NewReassembler(ReassemblerConfig{})
		var got []byte
		for _, i := range order {
			b, _, err := r.Add(t0, CmdInfer, 4, datas[i])
			if err != nil && !(errors.Is(err, ErrDuplicate) && got != nil) {
				t.Fatalf("%s: fragment %d: %v", name, i, err)
			}
			if b != nil {
				got = b
			}
		}
		if !bytes.Equal(got, body) {
			t.Errorf("%s: reassembled %q", name, got)
		}
		if r.Pending() != 0 {
			t.Errorf("%s: %d messages left pending", name, r.Pending())
		}
	}
}

func reversed(s []int) []int { slices.Reverse(s); return s }

func seqInts(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func TestReassemblerMissingThenRepair(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789"), 30)
	datas := fragmentsOf(t, body, 40) // 304 bytes → 8 fragments
	r := NewReassembler(ReassemblerConfig{})
	for _, i := range []int{0, 2, 3, 5, 6} {
		if b, missing, err := r.Add(t0, CmdInfer, 1, datas[i]); b != nil || missing != nil || err != nil {
			t.Fatalf("fragment %d: %v %v %v", i, b, missing, err)
		}
	}
	// The last fragment arrives: the receiver learns what to NACK.
	_, missing, err := r.Add(t0, CmdInfer, 1, datas[7])
	if err != nil || !bytes.Equal(missing, []byte{1, 4}) {
		t.Fatalf("missing %v, err %v", missing, err)
	}
	if got := r.Missing(CmdInfer, 1); !bytes.Equal(got, []byte{1, 4}) {
		t.Fatalf("Missing() = %v", got)
	}
	// A probe (the last fragment again) gets the same answer.
	if _, missing, _ := r.Add(t0, CmdInfer, 1, datas[7]); !bytes.Equal(missing, []byte{1, 4}) {
		t.Fatalf("probe: missing %v", missing)
	}
	_, _, _ = r.Add(t0, CmdInfer, 1, datas[4])
	b, _, err := r.Add(t0, CmdInfer, 1, datas[1])
	if err != nil || !bytes.Equal(b, body) {
		t.Fatalf("after repair: %v", err)
	}
	// A late duplicate is recognised, not started over.
	if _, _, err := r.Add(t0, CmdInfer, 1, datas[3]); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("late duplicate: %v", err)
	}
	if r.Pending() != 0 {
		t.Fatal("late duplicate started a new message")
	}
}

func TestReassemblerRejects(t *testing.T) {
	body := bytes.Repeat([]byte("ab"), 100)
	datas := fragmentsOf(t, body, 50)
	corrupt := bytes.Clone(datas[1])
	corrupt[5] ^= 1

	t.Run("checksum", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		var err error
		for i, d := range datas {
			if i == 1 {
				d = corrupt
			}
			_, _, err = r.Add(t0, CmdInfer, 2, d)
		}
		if !errors.Is(err, ErrBadChecksum) || r.Pending() != 0 {
			t.Fatalf("err %v, pending %d", err, r.Pending())
		}
	})
	t.Run("count changes", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		_, _, _ = r.Add(t0, CmdInfer, 2, datas[0])
		_, _, err := r.Add(t0, CmdInfer, 2, []byte{1, 9, 'x'})
		if !errors.Is(err, ErrMalformed) || r.Pending() != 0 {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("uneven pieces", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		_, _, _ = r.Add(t0, CmdInfer, 2, datas[0])
		_, _, err := r.Add(t0, CmdInfer, 2, datas[1][:20])
		if !errors.Is(err, ErrMalformed) || r.Pending() != 0 {
			t.Fatalf("err %v, pending %d", err, r.Pending())
		}
	})
	t.Run("last piece too long", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		_, _, _ = r.Add(t0, CmdInfer, 2, []byte{0, 3, 'a', 'b'})
		_, _, err := r.Add(t0, CmdInfer, 2, []byte{2, 3, 'a', 'b', 'c'})
		if !errors.Is(err, ErrMalformed) || r.Pending() != 0 {
			t.Fatalf("err %v, pending %d", err, r.Pending())
		}
	})
	t.Run("empty piece discards the message", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		_, _, _ = r.Add(t0, CmdInfer, 2, datas[0])
		_, _, err := r.Add(t0, CmdInfer, 2, []byte{1, byte(len(datas))})
		if !errors.Is(err, ErrMalformed) || r.Pending() != 0 {
			t.Fatalf("err %v, pending %d", err, r.Pending())
		}
	})
	t.Run("index beyond count", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{})
		if _, _, err := r.Add(t0, CmdInfer, 2, []byte{3, 3, 'a'}); !errors.Is(err, ErrMalformed) {
			t.Fatalf("err %v", err)
		}
		if _, _, err := r.Add(t0, CmdInfer, 2, []byte{0, 0, 'a'}); !errors.Is(err, ErrMalformed) {
			t.Fatalf("count 0: err %v", err)
		}
	})
	t.Run("too large is refused at the first fragment", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{MaxMessage: 1000})
		big := fragmentsOf(t, make([]byte, 5000), 254)
		if _, _, err := r.Add(t0, CmdInfer, 3, big[0]); !errors.Is(err, ErrTooLarge) || r.Pending() != 0 {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("busy", func(t *testing.T) {
		r := NewReassembler(ReassemblerConfig{MaxPending: 2})
		_, _, _ = r.Add(t0, CmdInfer, 1, datas[0])
		_, _, _ = r.Add(t0, CmdInfer, 2, datas[0])
		if _, _, err := r.Add(t0, CmdInfer, 3, datas[0]); !errors.Is(err, ErrBusy) || r.Pending() != 2 {
			t.Fatalf("err %v", err)
		}
	})
}

func TestReassemblerExpire(t *testing.T) {
	r := NewReassembler(ReassemblerConfig{Timeout: 10 * time.Second})
	datas := fragmentsOf(t, make([]byte, 600), 100)
	_, _, _ = r.Add(t0, CmdInfer, 1, datas[0])
	_, _, _ = r.Add(t0.Add(8*time.Second), CmdInfer, 1, datas[1]) // progress
	if n := r.Expire(t0.Add(12 * time.Second)); n != 0 {
		t.Fatalf("expired a message with recent progress")
	}
	if n := r.Expire(t0.Add(18 * time.Second)); n != 1 || r.Pending() != 0 {
		t.Fatalf("expired %d", n)
	}
}

// TestReassemblerLastProgress: the time a receiver's NACK MISSING timer
// runs from (§6) moves only when a fragment adds a piece — not for a copy of
// one it has — and is gone with the message.
func TestReassemblerLastProgress(t *testing.T) {
	datas := fragmentsOf(t, bytes.Repeat([]byte("x"), 100), 40) // 3 fragments
	r := NewReassembler(ReassemblerConfig{})
	if _, ok := r.LastProgress(CmdInfer, 1); ok {
		t.Fatal("progress of a message never begun")
	}
	t1, t2 := t0.Add(time.Second), t0.Add(2*time.Second)
	_, _, _ = r.Add(t0, CmdInfer, 1, datas[0])
	_, _, _ = r.Add(t1, CmdInfer, 1, datas[0]) // a copy: no progress
	if last, ok := r.LastProgress(CmdInfer, 1); !ok || !last.Equal(t0) {
		t.Fatalf("after a copy: %v %v, want %v", last, ok, t0)
	}
	_, _, _ = r.Add(t2, CmdInfer, 1, datas[1])
	if last, _ := r.LastProgress(CmdInfer, 1); !last.Equal(t2) {
		t.Fatalf("after a new piece: %v, want %v", last, t2)
	}
	if b, _, err := r.Add(t2, CmdInfer, 1, datas[2]); b == nil || err != nil {
		t.Fatalf("complete: %v", err)
	}
	if _, ok := r.LastProgress(CmdInfer, 1); ok {
		t.Fatal("progress of a finished message")
	}
}

func TestReassemblerPartial(t *testing.T) {
	datas := fragmentsOf(t, bytes.Repeat([]byte("x"), 100), 40) // 3 fragments
	r := NewReassembler(ReassemblerConfig{})
	steps := []struct {
		add       []byte
		count     int
		withFirst bool
	}{
		{nil, 0, false},
		{datas[1], 3, false},
		{datas[0], 3, true},
		{datas[2], 0, false}, // complete: nothing pending
	}
	for i, st := range steps {
		if st.add != nil {
			_, _, _ = r.Add(t0, CmdToolResult, 4, st.add)
		}
		if n, first := r.Partial(CmdToolResult, 4); n != st.count || first != st.withFirst {
			t.Errorf("step %d: %d %v, want %d %v", i, n, first, st.count, st.withFirst)
		}
	}
}
