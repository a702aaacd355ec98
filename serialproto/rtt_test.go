package serialproto

import (
	"testing"
	"time"
)

const ms = time.Millisecond

// TestRTTEstimator follows RFC 6298 §2 by hand: the first sample sets SRTT
// and RTTVAR = R/2, later ones smooth with α = 1/8 and β = 1/4, and the RTO
// stays within its bounds; a back-off doubles it until the next sample.
func TestRTTEstimator(t *testing.T) {
	type step struct {
		sample time.Duration // 0: a back-off instead
		rto    time.Duration
		srtt   time.Duration
		rttvar time.Duration
	}
	for _, tc := range []struct {
		name            string
		initial, lo, hi time.Duration
		steps           []step
	}{
		{"before any sample: the initial RTO", 250 * ms, 100 * ms, 4000 * ms, nil},
		{"first sample: SRTT=R, RTTVAR=R/2, RTO=3R", 250 * ms, 10 * ms, 4000 * ms, []step{
			{sample: 40 * ms, rto: 120 * ms, srtt: 40 * ms, rttvar: 20 * ms},
		}},
		{"second sample smooths", 250 * ms, 10 * ms, 4000 * ms, []step{
			{sample: 40 * ms, rto: 120 * ms, srtt: 40 * ms, rttvar: 20 * ms},
			// RTTVAR = 3/4·20 + 1/4·|40−80| = 25; SRTT = 7/8·40 + 1/8·80 = 45
			{sample: 80 * ms, rto: 145 * ms, srtt: 45 * ms, rttvar: 25 * ms},
		}},
		{"the floor holds", 250 * ms, 100 * ms, 4000 * ms, []step{
			{sample: 2 * ms, rto: 100 * ms, srtt: 2 * ms, rttvar: 1 * ms},
		}},
		{"G is the least variance term", 250 * ms, time.Microsecond, 4000 * ms, []step{
			// RTTVAR shrinks by 3/4 a sample: 1, 0.75, 0.5625, 0.421875,
			// 0.31640625, 0.2373046875 ms; RTO = 2 ms + 4·RTTVAR until that
			// falls below G = 1 ms.
			{sample: 2 * ms, rto: 6 * ms, srtt: 2 * ms, rttvar: 1000 * time.Microsecond},
			{sample: 2 * ms, rto: 5 * ms, srtt: 2 * ms, rttvar: 750 * time.Microsecond},
			{sample: 2 * ms, rto: 4250 * time.Microsecond, srtt: 2 * ms, rttvar: 562500 * time.Nanosecond},
			{sample: 2 * ms, rto: 3687500 * time.Nanosecond, srtt: 2 * ms, rttvar: 421875 * time.Nanosecond},
			{sample: 2 * ms, rto: 3265624 * time.Nanosecond, srtt: 2 * ms, rttvar: 316406 * time.Nanosecond},
			{sample: 2 * ms, rto: 3 * ms, srtt: 2 * ms, rttvar: 237304 * time.Nanosecond},
		}},
		{"back-off doubles up to the ceiling, a sample ends it", 250 * ms, 100 * ms, 4000 * ms, []step{
			{rto: 500 * ms}, {rto: 1000 * ms}, {rto: 2000 * ms}, {rto: 4000 * ms}, {rto: 4000 * ms}, {rto: 4000 * ms},
			{sample: 100 * ms, rto: 300 * ms, srtt: 100 * ms, rttvar: 50 * ms},
		}},
		{"a sample above the ceiling counts as the ceiling", 250 * ms, 100 * ms, 1000 * ms, []step{
			{sample: 5000 * ms, rto: 1000 * ms, srtt: 1000 * ms, rttvar: 500 * ms},
		}},
		{"the initial RTO is kept within the bounds", 10 * ms, 100 * ms, 4000 * ms, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := NewRTTEstimator(tc.initial, tc.lo, tc.hi)
			if len(tc.steps) == 0 {
				if want := min(max(tc.initial, tc.lo), tc.hi); e.RTO() != want {
					t.Fatalf("RTO %v, want %v", e.RTO(), want)
				}
				return
			}
			for i, s := range tc.steps {
				if s.sample == 0 {
					e.Backoff()
				} else {
					e.Sample(s.sample)
					if e.SRTT() != s.srtt || e.RTTVar() != s.rttvar {
						t.Fatalf("step %d: SRTT %v RTTVAR %v, want %v %v", i, e.SRTT(), e.RTTVar(), s.srtt, s.rttvar)
					}
				}
				if e.RTO() != s.rto {
					t.Fatalf("step %d: RTO %v, want %v", i, e.RTO(), s.rto)
				}
			}
		})
	}
}

// TestAckSACK: the bitmap's bit order and its bounds.
func TestAckSACK(t *testing.T) {
	var buf [MaxSACKBytes]byte
	bm := buf[:0]
	for _, i := range []int{0, 2, 7, 9, 255, 256, -1} {
		bm = SetSACK(bm, i)
	}
	a := Ack{Next: 5, Window: 255, SACK: bm}
	if len(bm) != 32 || bm[0] != 0xA1 || bm[1] != 0x40 || bm[31] != 0x01 {
		t.Fatalf("bitmap % x", bm)
	}
	for i := range 260 {
		want := i == 0 || i == 2 || i == 7 || i == 9 || i == 255
		if a.Sacked(i) != want {
			t.Errorf("Sacked(%d) = %v", i, a.Sacked(i))
		}
	}
	if a.Sacked(-1) {
		t.Error("Sacked(-1)")
	}
	body, err := a.AppendBody(nil)
	if err != nil {
		t.Fatal(err)
	}
	var b Ack
	if err := b.UnmarshalBody(body); err != nil || b.Next != 5 || len(b.SACK) != 32 || !b.Sacked(255) {
		t.Fatalf("round trip: %v %+v", err, b)
	}
	if _, err := (&Ack{SACK: []byte{1, 0}}).AppendBody(nil); err == nil {
		t.Error("a bitmap ending in a zero byte encoded")
	}
	if n := testing.AllocsPerRun(100, func() {
		bm := buf[:0]
		bm = SetSACK(bm, 3)
		_ = SetSACK(bm, 17)
	}); n != 0 {
		t.Errorf("SetSACK into an array allocates %v times", n)
	}
}

// TestRetryHorizon: the give-up time is a 100 ms timer's (or the initial
// RTO's, when smaller), doubling to MaxRTO, whatever the estimate learned.
func TestRetryHorizon(t *testing.T) {
	for _, tc := range []struct {
		initial time.Duration
		retries int
		want    time.Duration
	}{
		{250 * ms, 0, 100 * ms},
		{250 * ms, 3, 1500 * ms},
		{250 * ms, 8, (100 + 200 + 400 + 800 + 1600 + 3200 + 4000 + 4000 + 4000) * ms},
		{10 * ms, 3, 150 * ms},
		{0, 1, 3 * ms},
		{time.Second, -1, 100 * ms},
	} {
		if got := RetryHorizon(tc.initial, tc.retries); got != tc.want {
			t.Errorf("RetryHorizon(%v, %d) = %v, want %v", tc.initial, tc.retries, got, tc.want)
		}
	}
}
