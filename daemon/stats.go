package daemon

import "sync/atomic"

// Stats are the daemon's counters.
type Stats struct {
	FramesIn, FramesOut, BadFrames         atomic.Int64
	AuthFailures                           atomic.Int64 // unsigned, bad tag, replayed or stale frames
	Sessions                               atomic.Int64 // open now
	Accepted, Busy, Done, Failed, Canceled atomic.Int64
	Duplicates                             atomic.Int64 // retransmitted requests answered again
	// AuthFailures by reason (§9.2).
	AuthUnsigned, AuthBadTag, AuthReplay, AuthStale atomic.Int64
	RateLimited                                     atomic.Int64 // frames over a source's rate, dropped
	Forbidden                                       atomic.Int64 // HELLOs and INFERs the policy refused
	Evicted                                         atomic.Int64 // idle sessions closed to make room
	Retransmits                                     atomic.Int64 // stream chunks sent again
}
