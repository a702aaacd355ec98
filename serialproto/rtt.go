package serialproto

import "time"

// Retransmission timer bounds (docs/protocol.md §7.2, §13).
const (
	// InitialRTO is the UDP RTO before the first round-trip sample.
	InitialRTO = 250 * time.Millisecond
	// MinRTO is the default floor of an adaptive RTO. RFC 6298 asks for
	// 1 s because of TCP's delayed ACKs; here every request is answered at
	// once, so the floor only has to cover a link's jitter. A link whose
	// round trip is known to be short and steady (a wired LAN, loopback)
	// may lower it, down to RTOGranularity.
	MinRTO = 100 * time.Millisecond
	// MaxRTO bounds the RTO and its back-off.
	MaxRTO = 4 * time.Second
	// RTOGranularity is G of RFC 6298: the smallest variance term.
	RTOGranularity = time.Millisecond
)

// RTTEstimator is RFC 6298's retransmission timer for one peer: the
// smoothed round trip SRTT and its variation RTTVAR, RTO = SRTT +
// max(G, 4·RTTVAR) within [Min, Max], doubled per back-off. Karn's rule is
// the caller's: Sample only round trips of frames sent once. The zero
// value is not ready; use NewRTTEstimator. Not safe for concurrent use.
type RTTEstimator struct {
	min, max     time.Duration
	rto          time.Duration // before back-off
	srtt, rttvar time.Duration
	sampled      bool
	backoff      uint8
	samples      uint64
}

// NewRTTEstimator starts at initial (InitialRTO on UDP; a serial link's
// line-rate RTO) and keeps the RTO within [minRTO, maxRTO]; zero bounds
// take MinRTO and MaxRTO.
func NewRTTEstimator(initial, minRTO, maxRTO time.Duration) RTTEstimator {
	if minRTO <= 0 {
		minRTO = MinRTO
	}
	if maxRTO <= 0 {
		maxRTO = MaxRTO
	}
	maxRTO = max(maxRTO, minRTO)
	return RTTEstimator{min: minRTO, max: maxRTO, rto: min(max(initial, minRTO), maxRTO)}
}

// Sample feeds one measured round trip (RFC 6298 §2.2–2.3) and ends any
// back-off: a frame sent once got through.
func (e *RTTEstimator) Sample(rtt time.Duration) {
	rtt = min(max(rtt, 0), e.max)
	if !e.sampled {
		e.srtt, e.rttvar, e.sampled = rtt, rtt/2, true
	} else {
		d := e.srtt - rtt
		if d < 0 {
			d = -d
		}
		e.rttvar = (3*e.rttvar + d) / 4 // β = 1/4
		e.srtt = (7*e.srtt + rtt) / 8   // α = 1/8
	}
	e.rto = min(max(e.srtt+max(RTOGranularity, 4*e.rttvar), e.min), e.max)
	e.backoff = 0
	e.samples++
}

// Backoff doubles the RTO after a retransmission timeout (RFC 6298 §5.5),
// up to Max; the next Sample ends it.
func (e *RTTEstimator) Backoff() {
	if e.rto<<e.backoff < e.max {
		e.backoff++
	}
}

// RTO is the current timeout, back-off included.
func (e *RTTEstimator) RTO() time.Duration { return min(e.rto<<e.backoff, e.max) }

// SRTT is the smoothed round trip; 0 before the first sample.
func (e *RTTEstimator) SRTT() time.Duration { return e.srtt }

// RTTVar is the round trip's variation; 0 before the first sample.
func (e *RTTEstimator) RTTVar() time.Duration { return e.rttvar }

// Samples counts the round trips fed so far.
func (e *RTTEstimator) Samples() uint64 { return e.samples }
