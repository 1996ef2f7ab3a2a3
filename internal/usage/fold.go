package usage

import (
	"time"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kw "keyward.dev/keyward/api/v1alpha1"
)

// Bucket is the size of one usage bucket.
const Bucket = time.Hour

// Window is how far back the usage figures reach.
const Window = 24 * time.Hour

// Observation is what one replica reported of one key ID.
type Observation struct {
	Replica string
	KeyCount
}

// Fold takes the reports' totals for one ApiKey into its usage at now: the
// increase since each (replica, key ID) cursor goes into the hour of now,
// the cursors move, hours that began more than Window ago fall out, and
// the figures are summed again. live says which replica runs answered this
// round (nil: not every replica answered, and then no cursor is dropped);
// a cursor whose run is gone for good (Live.Gone) is dropped. Fold is pure:
// the same inputs give the same status, so a retried write never counts
// twice (the cursors travel with the counts).
func Fold(old *kw.Usage, lastUsed *metav1.Time, obs []Observation, live *Live, now time.Time) (*kw.Usage, *metav1.Time) {
	u := &kw.Usage{}
	if old != nil {
		u = old.DeepCopy()
	}
	hour := metav1.NewTime(now.UTC().Truncate(Bucket))
	for _, o := range obs {
		c := cursor(u, o.Replica, o.KeyID)
		var was kw.UsageCursor
		if c != nil {
			was = *c
		}
		allowed, denied := increase(was.Allowed, o.Allowed), increase(was.Denied, o.Denied)
		limited := int64(o.Limited) - was.Limited
		if int64(o.Allowed) < was.Allowed || int64(o.Denied) < was.Denied || limited < 0 {
			limited = int64(o.Limited) // the counts started again: all of it is new
		}
		if allowed == 0 && denied == 0 {
			continue
		}
		addHour(u, hour, allowed, denied, limited)
		if c == nil {
			u.Cursors = append(u.Cursors, kw.UsageCursor{Replica: o.Replica, KeyID: o.KeyID})
			c = &u.Cursors[len(u.Cursors)-1]
		}
		c.Allowed, c.Denied, c.Limited = int64(o.Allowed), int64(o.Denied), int64(o.Limited)
		c.SeenAt = metav1.NewTime(now.UTC().Truncate(time.Second))
		if !o.LastUsed.IsZero() && (lastUsed == nil || o.LastUsed.Truncate(time.Second).After(lastUsed.Time)) {
			lastUsed = &metav1.Time{Time: o.LastUsed.UTC().Truncate(time.Second)}
		}
	}
	since := now.Add(-Window)
	kept := u.Cursors[:0]
	for _, c := range u.Cursors {
		if !live.Gone(c, now) {
			kept = append(kept, c)
		}
	}
	u.Cursors = capCursors(kept, live)
	u.Last24h, u.Denied24h, u.Limited24h = 0, 0, 0
	hours := u.Hours[:0]
	for _, h := range u.Hours {
		if h.Start.Time.Before(since) {
			continue
		}
		hours = append(hours, h)
		u.Last24h += h.Allowed
		u.Denied24h += h.Denied
		u.Limited24h += h.Limited
	}
	u.Hours = hours
	if len(u.Hours) == 0 {
		u.Hours = nil
	}
	if len(u.Cursors) == 0 {
		u.Cursors = nil
	}
	return u, lastUsed
}

// Changed reports whether a fold changed anything worth writing.
func Changed(old *kw.Usage, oldLast *metav1.Time, u *kw.Usage, last *metav1.Time) bool {
	if old == nil {
		old = &kw.Usage{}
	}
	return !equality.Semantic.DeepEqual(old, u) || !equality.Semantic.DeepEqual(oldLast, last)
}

// increase is how much a replica's running total grew since the cursor;
// a total below the cursor means the count started again (the key left
// and re-entered the replica's index), and all of it is new.
func increase(cursor int64, total uint64) int64 {
	if int64(total) < cursor {
		return int64(total)
	}
	return int64(total) - cursor
}

// cursor finds the cursor of a replica and key ID, or nil.
func cursor(u *kw.Usage, replica, keyID string) *kw.UsageCursor {
	for i := range u.Cursors {
		if c := &u.Cursors[i]; c.Replica == replica && c.KeyID == keyID {
			return c
		}
	}
	return nil
}

func addHour(u *kw.Usage, hour metav1.Time, allowed, denied, limited int64) {
	if n := len(u.Hours); n > 0 && u.Hours[n-1].Start.Equal(&hour) {
		u.Hours[n-1].Allowed += allowed
		u.Hours[n-1].Denied += denied
		u.Hours[n-1].Limited += limited
		return
	}
	u.Hours = append(u.Hours, kw.UsageHour{Start: hour, Allowed: allowed, Denied: denied, Limited: limited})
}

// ExhaustedUntil is, for a quota of perDay allowed calls shared by
// replicas endpoint replicas, when usage u (folded at now) leaves a call
// for each replica again as its hours fall out of the window, or nil while
// it does. Each replica may allow its whole share (1/replicas, rounded
// down) of what is left: with fewer calls left than replicas no replica
// may allow one, and the key is exhausted (docs/limits.md: up to
// replicas-1 calls of a quota go unused).
func ExhaustedUntil(u *kw.Usage, perDay int64, replicas int, now time.Time) *metav1.Time {
	perDay -= int64(max(replicas, 1) - 1)
	if u == nil || perDay <= 0 || u.Last24h < perDay {
		return nil
	}
	used := u.Last24h
	for _, h := range u.Hours {
		used -= h.Allowed
		// An hour falls out once it began more than Window ago.
		if out := h.Start.Add(Window + time.Nanosecond); used < perDay && out.After(now) {
			t := metav1.NewTime(out.Truncate(time.Second).Add(time.Second))
			return &t
		}
	}
	t := metav1.NewTime(now.Add(Bucket).Truncate(time.Second))
	return &t
}

// Due reports whether a usage must be folded again though nothing new came
// in: an hour has fallen out of the window, or a cursor's run is gone for
// good (Live.Gone).
func Due(u *kw.Usage, live *Live, now time.Time) bool {
	if u == nil {
		return false
	}
	if len(u.Hours) > 0 && u.Hours[0].Start.Time.Before(now.Add(-Window)) {
		return true
	}
	for _, c := range u.Cursors {
		if live.Gone(c, now) {
			return true
		}
	}
	return len(u.Cursors) > MaxCursors
}

// Share is how far the shown figures (old) are from the folded ones (nu),
// as a share of what is shown: 0 for no change, 1 for double.
func Share(old, nu *kw.Usage) float64 {
	var was, is int64
	if old != nil {
		was = old.Last24h + old.Denied24h
	}
	if nu != nil {
		is = nu.Last24h + nu.Denied24h
	}
	d := is - was
	if d < 0 {
		d = -d
	}
	return float64(d) / float64(max(was, 1))
}
