package index

// Per-key limits (spec.limits), enforced by each replica on its own, with
// no shared store:
//
//   - the rate is a token bucket per ApiKey, kept as GCRA (the generic
//     cell rate algorithm: one "theoretical arrival time" per key, moved
//     by compare-and-swap), at this replica's share of the rate and burst:
//     1/N of them, N the ready replicas of the endpoint's Service;
//   - the daily quota: what the controller has collected (status.usage,
//     with this replica's cursors) leaves R = perDay - used calls; this
//     replica may allow R/N more than it had reported when that status was
//     written. Together the replicas then allow at most R before the next
//     status, whatever their traffic, if they agree on N. The controller
//     also marks an exhausted key with the time it recovers
//     (status.quota.exhaustedUntil), which every replica honours.
//
// docs/limits.md has the bounds as formulas and as measured.

// The endpoint reads its own Service's EndpointSlices (internal/app,
// --peers-service), in its namespace only, to know how many replicas
// share each key's limits.
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=list;watch,namespace=system

import (
	"strconv"
	"sync/atomic"
	"time"
)

// Limits are an ApiKey's limits; zero fields are no limit.
type Limits struct {
	// PerSecond and Burst are the token bucket: refilled at PerSecond,
	// holding Burst.
	PerSecond, Burst int64
	// PerDay is the quota of allowed calls in a rolling 24 hours.
	PerDay int64
}

func (l Limits) any() bool { return l.PerSecond > 0 || l.PerDay > 0 }

// Quota is what an ApiKey's status says of its daily quota, as this
// replica reads it.
type Quota struct {
	// Used is the allowed calls of the window collected so far
	// (status.usage.last24h).
	Used int64
	// Collected is, by key ID, the allowed calls of this replica (this
	// run) already taken into Used: its cursors in status.usage.
	Collected map[string]int64
	// ExhaustedUntil is the controller's mark: until then the key is over
	// its quota.
	ExhaustedUntil time.Time
}

// Limit reasons.
const (
	LimitOK uint8 = iota
	LimitRate
	LimitQuota
)

// LimitState is how one call stood against its key's limits, for the
// answer and its RateLimit headers. All times are in whole seconds.
type LimitState struct {
	// Reason is LimitOK, or why the call was refused.
	Reason uint8
	// RetryAfter is when a refused call may be tried again.
	RetryAfter int64
	// The rate: the policy (Burst calls, refilled at PerSecond), the calls
	// the bucket holds now, and when it is full again.
	PerSecond, Burst, RateRemaining, RateReset int64
	// The quota: the policy, the calls left, and when the window next
	// moves (or the quota recovers, once exhausted).
	PerDay, DayRemaining, DayReset int64
	// Policy is the RateLimit-Policy header's value, formatted once per
	// policy (PolicyHeader).
	Policy string
}

// PolicyHeader is the RateLimit-Policy value (IETF draft) of a key's
// limits: "rate" is the bucket (q calls at once, refilled over w
// seconds), "day" the quota.
func PolicyHeader(perSecond, burst, perDay int64) string {
	var b []byte
	if perSecond > 0 {
		b = append(b, `"rate";q=`...)
		b = strconv.AppendInt(b, burst, 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, max((burst+perSecond-1)/perSecond, 1), 10)
	}
	if perDay > 0 {
		if perSecond > 0 {
			b = append(b, ", "...)
		}
		b = append(b, `"day";q=`...)
		b = strconv.AppendInt(b, perDay, 10)
		b = append(b, ";w=86400"...)
	}
	return string(b)
}

// policyOf interns the policy header of lim; the caller holds ix.mu.
// Checks read the table without a lock: it only grows, and is replaced
// whole.
func (ix *Index) policyOf(lim Limits) uint32 {
	text := PolicyHeader(lim.PerSecond, lim.Burst, lim.PerDay)
	if n, ok := ix.policyIDs[text]; ok {
		return n
	}
	old := *ix.limitPolicies.Load()
	grown := append(old[:len(old):len(old)], text)
	ix.limitPolicies.Store(&grown)
	n := uint32(len(grown)) // 1-based: 0 is none
	ix.policyIDs[text] = n
	return n
}

func (ix *Index) policyText(n uint32) string {
	if n == 0 {
		return ""
	}
	return (*ix.limitPolicies.Load())[n-1]
}

// Limited reports whether the key has limits (and so the answer
// RateLimit headers).
func (s *LimitState) Limited() bool { return s.PerSecond > 0 || s.PerDay > 0 }

// QuotaRetry is the Retry-After of a call refused because this replica's
// share of the quota is used up while the key's quota is not known to be
// exhausted: the usage collection refreshes the shares about this often.
const QuotaRetry = 5 * time.Second

// limiter is one limited ApiKey's state in one replica. It has no
// pointers, and every field is atomic: checks read and move it under no
// lock, the writer changes the policy in place.
type limiter struct {
	// The policy as declared (for the headers).
	perSecond, burst, perDay atomic.Int64
	// interval is the time between calls at this replica's share of the
	// rate, in nanoseconds; room is its share of the burst times interval.
	interval, room atomic.Int64
	// tat is GCRA's theoretical arrival time, Unix nanoseconds.
	tat atomic.Int64
	// used counts the calls this replica allowed for the key; budget is
	// where it must stop until the next status; share is this replica's
	// part of what the quota had left at that status.
	used, budget, share atomic.Int64
	// dayLeft is the quota left at the last status (perDay - used there).
	dayLeft atomic.Int64
	// exhaustedUntil is the controller's mark, Unix nanoseconds.
	exhaustedUntil atomic.Int64
	// policy is the number of the policy's header text (Index.policyOf).
	policy atomic.Uint32
}

const limChunk = 256

type limChunkT [limChunk]limiter

// limiterAt returns limiter n (1-based); the chunk list only grows, and is
// replaced whole, so a check reads it without a lock.
func (ix *Index) limiterAt(n uint32) *limiter {
	chunks := *ix.lims.Load()
	i := n - 1
	return &chunks[i/limChunk][i%limChunk]
}

// newLimiter returns the number of a fresh limiter; the caller holds ix.mu.
func (ix *Index) newLimiter() uint32 {
	var n uint32
	if k := len(ix.freeLims); k > 0 {
		n, ix.freeLims = ix.freeLims[k-1], ix.freeLims[:k-1]
	} else {
		chunks := *ix.lims.Load()
		if ix.nLims == uint32(len(chunks))*limChunk {
			grown := append(chunks[:len(chunks):len(chunks)], new(limChunkT))
			ix.lims.Store(&grown)
		}
		ix.nLims++
		n = ix.nLims
	}
	l := ix.limiterAt(n)
	for _, f := range []*atomic.Int64{&l.perSecond, &l.burst, &l.perDay, &l.interval, &l.room, &l.tat,
		&l.used, &l.budget, &l.share, &l.dayLeft, &l.exhaustedUntil} {
		f.Store(0)
	}
	l.policy.Store(0)
	return n
}

// setPolicy applies limits to l for n replicas.
func (l *limiter) setPolicy(lim Limits, peers int64) {
	l.perSecond.Store(lim.PerSecond)
	l.burst.Store(lim.Burst)
	l.perDay.Store(lim.PerDay)
	if lim.PerSecond > 0 {
		interval := max(peers*int64(time.Second)/lim.PerSecond, 1)
		room := max(lim.Burst/peers, 1) * interval
		// The calls the bucket is short of stay short at the new rate: a
		// key whose rate is raised does not wait out its debt at the old.
		if was := l.interval.Swap(interval); was > 0 && was != interval {
			now := time.Now().UnixNano()
			if tat := l.tat.Load(); tat > now {
				l.tat.Store(now + min((tat-now)/was*interval, room))
			}
		}
		l.room.Store(room)
	} else {
		l.interval.Store(0)
	}
}

// setQuota recomputes this replica's budget from the status: uncollected
// is what it allowed that the status does not hold yet, counted after used
// was read as used0 (a call allowed between the two is then held back
// twice, never granted twice; only a call allowed before used0 and not yet
// counted in its key's record is granted again: at most the checks in
// flight).
func (l *limiter) setQuota(q Quota, used0, uncollected, peers int64) {
	perDay := l.perDay.Load()
	if perDay == 0 {
		return
	}
	left := max(perDay-q.Used, 0)
	share := left / peers
	l.dayLeft.Store(left)
	l.share.Store(share)
	l.budget.Store(used0 + share - uncollected)
	l.exhaustedUntil.Store(unixNano(q.ExhaustedUntil))
}

// setPeers moves l's shares to a new number of replicas.
func (l *limiter) setPeers(peers int64) {
	l.setPolicy(Limits{PerSecond: l.perSecond.Load(), Burst: l.burst.Load(), PerDay: l.perDay.Load()}, peers)
	if l.perDay.Load() > 0 {
		share := l.dayLeft.Load() / peers
		l.budget.Add(share - l.share.Swap(share))
	}
}

// admit decides one call of a key with limiter n at now, and takes it
// from the bucket and the quota when it is allowed.
func (ix *Index) admit(n uint32, now time.Time) (st LimitState) {
	l := ix.limiterAt(n)
	t := now.UnixNano()
	peers := max(ix.peers.Load(), 1)
	st.Policy = ix.policyText(l.policy.Load())
	st.PerDay = l.perDay.Load()
	quota := st.PerDay > 0
	if quota {
		if until := l.exhaustedUntil.Load(); until > t {
			st.Reason, st.RetryAfter = LimitQuota, ceilSeconds(until-t)
			st.DayReset = st.RetryAfter
			ix.rateState(l, t, &st)
			return st
		}
		if l.used.Add(1) > l.budget.Load() {
			l.used.Add(-1)
			st.Reason, st.RetryAfter = LimitQuota, int64(QuotaRetry/time.Second)
			st.DayReset = nextHour(t)
			ix.rateState(l, t, &st)
			return st
		}
		st.DayRemaining = min(max(l.budget.Load()-l.used.Load(), 0)*peers, l.dayLeft.Load())
		st.DayReset = nextHour(t)
	}
	st.PerSecond, st.Burst = l.perSecond.Load(), l.burst.Load()
	interval, room := l.interval.Load(), l.room.Load()
	if interval == 0 {
		return st
	}
	for {
		tat := l.tat.Load()
		next := max(tat, t) + interval
		if next-t > room {
			if quota {
				l.used.Add(-1) // refused after all: the quota gets the call back
			}
			st.Reason = LimitRate
			st.RetryAfter = ceilSeconds(next - room - t)
			st.RateRemaining = 0
			st.RateReset = ceilSeconds(max(tat-t, 0))
			return st
		}
		if l.tat.CompareAndSwap(tat, next) {
			st.RateRemaining = (room - (next - t)) / interval * peers
			st.RateReset = ceilSeconds(next - t)
			return st
		}
	}
}

// rateState fills in the rate headers of a call refused for its quota.
func (ix *Index) rateState(l *limiter, t int64, st *LimitState) {
	st.PerSecond, st.Burst = l.perSecond.Load(), l.burst.Load()
	interval, room := l.interval.Load(), l.room.Load()
	if interval == 0 {
		return
	}
	wait := max(l.tat.Load()-t, 0)
	st.RateRemaining = max(room-wait, 0) / interval * max(ix.peers.Load(), 1)
	st.RateReset = ceilSeconds(wait)
}

func ceilSeconds(ns int64) int64 {
	return max((ns+int64(time.Second)-1)/int64(time.Second), 0)
}

// nextHour is the seconds until the next whole hour, when the rolling
// window next moves.
func nextHour(t int64) int64 {
	h := int64(time.Hour)
	return ceilSeconds(h - t%h)
}

// SetPeers sets the number of ready endpoint replicas that share each
// key's limits (1 or more).
func (ix *Index) SetPeers(n int) {
	n = max(n, 1)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.peers.Swap(int64(n)) == int64(n) {
		return
	}
	for oi := range uint32(ix.owners.len()) {
		if o := ix.owners.at(oi); o.lim != 0 {
			ix.limiterAt(o.lim).setPeers(int64(n))
		}
	}
}

// Peers is the number of replicas each key's limits are shared by.
func (ix *Index) Peers() int { return int(max(ix.peers.Load(), 1)) }

// SetReplica names this replica's run as the usage report does, so that
// its cursors in ApiKeys' status can be found.
func (ix *Index) SetReplica(name string) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.replica = name
}

// Replica is the name SetReplica gave.
func (ix *Index) Replica() string {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	return ix.replica
}

// applyLimits brings owner oi's limiter in line with its ApiKey's limits
// and quota; the caller holds ix.mu. It reports whether the owner's
// limiter number changed (its slots must be published again).
func (ix *Index) applyLimits(oi uint32, lim Limits, q Quota) bool {
	o := ix.owners.at(oi)
	peers := max(ix.peers.Load(), 1)
	before := o.lim
	switch {
	case !lim.any() && o.lim != 0:
		ix.freeLims = append(ix.freeLims, o.lim)
		o.lim = 0
	case lim.any() && o.lim == 0:
		o.lim = ix.newLimiter()
	}
	if o.lim == 0 {
		return before != 0
	}
	l := ix.limiterAt(o.lim)
	l.setPolicy(lim, peers)
	l.policy.Store(ix.policyOf(lim))
	used0 := l.used.Load()
	l.setQuota(q, used0, ix.uncollected(o, q), peers)
	return before != o.lim
}

// uncollected is what this replica allowed for owner o that q does not
// hold yet: by key ID, its count beyond its cursor (all of it when its
// count is below the cursor: it started again, as the usage fold reads
// it). The caller holds ix.mu.
func (ix *Index) uncollected(o *owner, q Quota) int64 {
	var n int64
	for ki := o.keys; ki != none; ki = ix.rkeys.at(ki).next {
		id := &ix.rkeys.at(ki).id
		s := ix.shard(id)
		s.mu.RLock()
		var total int64
		if sl, ok := s.m.get(id); ok && s.name(s.record(sl.rec)) == ix.nameBytes.view(o.name) {
			total = int64(s.record(sl.rec).usage.n[Allowed].Load())
		}
		s.mu.RUnlock()
		if c := q.Collected[id.String()]; total >= c {
			n += total - c
		} else {
			n += total
		}
	}
	return n
}

// Admit decides one call of an allowed key against its limits at now, and
// takes it from the key's bucket and quota when it is allowed. A key
// without limits is always admitted, with a zero state.
//
// The identity names its limiter as the lookup found it: if the key's
// limits were removed and the limiter given to another key meanwhile, this
// one call is judged against that key's. Nothing else can mix them up.
func (ix *Index) Admit(id Identity, now time.Time) LimitState {
	if id.lim == 0 {
		return LimitState{}
	}
	return ix.admit(id.lim, now)
}
