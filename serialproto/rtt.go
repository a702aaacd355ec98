package serialproto

import "time"

// Retransmission timer bounds (docs/protocol.md §7.2, §13).
const (
	// InitialRTO is the UDP RTO before the first round-trip sample.
	InitialRTO = 250 * time.Millisecond
	// MinRTO is the default floor of an adaptive UDP RTO. RFC 6298 asks
	// for 1 s because of TCP's delayed ACKs (Linux uses 200 ms for the same
	// reason); here every request is answered at once, so the floor only
	// has to cover the jitter the estimate has not yet seen: 10 ms is
	// above a LAN's and Wi-Fi's link-layer jitter (802.11 retries and
	// aggregation: a few ms), and lasting variation — power save, a busy
	// channel — shows in RTTVAR, which raises the RTO above the floor.
	// QUIC (RFC 9002) has no floor but its 1 ms granularity. A spurious
	// retransmission costs a datagram each way and never runs a request
	// twice (§5); the give-up time does not shrink with the floor
	// (RetryHorizon). docs/reliability.md has the measurements.
	MinRTO = 10 * time.Millisecond
	// GiveUpFloor is the RTO the give-up time is reckoned from
	// (RetryHorizon): the floor before it was lowered to MinRTO.
	GiveUpFloor = 100 * time.Millisecond
	// MaxRTO bounds the RTO and its back-off.
	MaxRTO = 4 * time.Second
	// RTOGranularity is G of RFC 6298: the smallest variance term.
	RTOGranularity = time.Millisecond
)

// RetryHorizon is the least time a sender keeps retransmitting a frame
// before it gives up after retries retransmissions: the timeouts a fixed
// timer starting at min(initial, GiveUpFloor) and doubling to MaxRTO would
// take. An RTO the estimate brought below that retransmits sooner but does
// not give up sooner, so a link that stalls for a second (a Wi-Fi roam)
// costs retransmissions, not the request — as Linux reckons a connection's
// give-up time from TCP_RTO_MIN whatever a route's rto_min.
func RetryHorizon(initial time.Duration, retries int) time.Duration {
	rto := min(max(initial, RTOGranularity), GiveUpFloor)
	var total time.Duration
	for range max(retries, 0) + 1 {
		total += rto
		rto = min(2*rto, MaxRTO)
	}
	return total
}

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
