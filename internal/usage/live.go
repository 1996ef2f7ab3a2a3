package usage

import (
	"slices"
	"strings"
	"time"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Cursors and how long they stay.
//
// A cursor says how much of one replica run's running total for one key ID
// is already counted. It must stay as long as that run may report again:
// dropped early, the run's next report would be counted in full a second
// time. It may go as soon as the run can never report again, and a round
// in which every replica answered can tell that in two cases:
//
//   - the run's host (its pod) answered this round under another run: the
//     process restarted, and a host runs one endpoint at a time;
//   - the run's host is no longer behind the endpoints' Service at all,
//     ready or not (the pod is gone: a rollout, a scale-down, an eviction).
//
// Otherwise (a static --usage-endpoints list, or a run name that names no
// host), a cursor of a run that did not answer goes a Window after it last
// moved, as before. So an ApiKey holds at most one cursor per key ID for
// each replica pod behind the Service (live or not yet gone), plus, with
// a static list, one per run that counted the key in the last Window. The
// CRD admits MaxCursors; past it (which the rules above keep far off) the
// cursors of the runs that did not answer go, least recently moved first,
// and those runs, should they report again, are counted again.

// MaxCursors is the most cursors an ApiKey's status holds (the CRD's
// maxItems): a status with more would be refused, and its figures frozen.
const MaxCursors = 1000

// Live is what one collection round learned of the replicas. A nil *Live
// means that not every replica answered: then no cursor is gone.
type Live struct {
	runs    map[string]bool // the runs that answered
	hosts   map[string]bool // the hosts of the runs that answered
	present map[string]bool // hosts behind the Service, ready or not; nil: unknown
}

// Answered is the Live of a round in which every replica answered: runs
// are the replica runs that answered, present the hosts (pod names) behind
// the endpoints' Service, answering or not, or nil when unknown.
func Answered(runs, present map[string]bool) *Live {
	l := &Live{runs: runs, hosts: map[string]bool{}, present: present}
	for r := range runs {
		if h := HostOf(r); h != "" {
			l.hosts[h] = true
		}
	}
	return l
}

// answered reports whether the run answered this round.
func (l *Live) answered(run string) bool { return l != nil && l.runs[run] }

// Gone reports whether cursor c's run can never report again (see above),
// or, for a run whose host cannot be told, whether the cursor last moved
// more than a Window before now and its run did not answer.
func (l *Live) Gone(c kw.UsageCursor, now time.Time) bool {
	if l == nil || l.runs[c.Replica] {
		return false
	}
	if h := HostOf(c.Replica); h != "" && (l.hosts[h] || l.present != nil && !l.present[h]) {
		return true
	}
	return c.SeenAt.Time.Before(now.Add(-Window))
}

// HostOf is the host part of a replica run's name as ReplicaName makes it
// (host, '-', 8 hex digits), or "" for a name of another form, and for a
// host of maxHost bytes: that one may have been cut (HostName), and two
// pods whose names share their first maxHost bytes must not be taken for
// one.
func HostOf(run string) string {
	i := len(run) - 9
	if i < 1 || i >= maxHost || run[i] != '-' {
		return ""
	}
	for _, r := range run[i+1:] {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return ""
		}
	}
	return run[:i]
}

// maxHost is the longest host part of a run's name: with the suffix, a
// run's name fits the cursor's 64 bytes.
const maxHost = 48

// HostName is the host part a replica running on a host (a pod) of that
// name gives its runs: names are cut at maxHost bytes.
func HostName(host string) string {
	if len(host) > maxHost {
		return host[:maxHost]
	}
	return host
}

// capCursors keeps at most MaxCursors cursors: the runs that answered
// first, then the others by when they last moved, latest first.
func capCursors(cs []kw.UsageCursor, live *Live) []kw.UsageCursor {
	if len(cs) <= MaxCursors {
		return cs
	}
	slices.SortStableFunc(cs, func(a, b kw.UsageCursor) int {
		if la, lb := live.answered(a.Replica), live.answered(b.Replica); la != lb {
			if la {
				return -1
			}
			return 1
		}
		if c := b.SeenAt.Time.Compare(a.SeenAt.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Replica+a.KeyID, b.Replica+b.KeyID)
	})
	return cs[:MaxCursors]
}
