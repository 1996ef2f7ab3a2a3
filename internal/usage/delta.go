package usage

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"keyward.dev/keyward/internal/index"
)

// Delta is a replica's report of the keys whose counts moved (protocol 2,
// GET /usage?v=2): only those, not every key it ever checked, so a
// collection costs in proportion to the keys that saw traffic.
//
// Each key's figures are still its running totals since the replica
// started, as in Report: the controller's fold takes in the increase over
// its cursor, so a key sent twice is never counted twice. What makes a
// delta complete is the ack: a request names the last report it received
// (ack=ID); a report not acknowledged is sent again with the next, and a
// collector that starts over asks for everything (full=1).
type Delta struct {
	Replica string `json:"replica"`
	// ID names this report: the next request acknowledges it.
	ID   uint64 `json:"id"`
	Full bool   `json:"full,omitempty"`
	// Keys, compact: ["namespace/name", "keyId", allowed, denied, limited,
	// lastUsed (Unix seconds, 0 for never)].
	Keys []Compact `json:"keys"`
}

// Compact is one key's totals in a Delta, encoded as a JSON array (about
// 60 bytes a key, against 130 for KeyCount).
type Compact struct {
	Key, KeyID               string
	Allowed, Denied, Limited uint64
	LastUsed                 int64
}

// MarshalJSON writes the array.
func (c Compact) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 80)
	b = append(b, '[')
	b = strconv.AppendQuote(b, c.Key)
	b = append(b, ',')
	b = strconv.AppendQuote(b, c.KeyID)
	for _, n := range []uint64{c.Allowed, c.Denied, c.Limited} {
		b = append(b, ',')
		b = strconv.AppendUint(b, n, 10)
	}
	b = append(b, ',')
	b = strconv.AppendInt(b, c.LastUsed, 10)
	return append(b, ']'), nil
}

// UnmarshalJSON reads the array, or the object of protocol 1 (KeyCount):
// a replica not yet upgraded answers a request for protocol 2 with its
// full Report of protocol 1, which decodes as a Delta with ID 0 (so the
// next request asks for everything again, as protocol 1 always gives).
func (c *Compact) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		var k KeyCount
		if err := json.Unmarshal(t, &k); err != nil {
			return err
		}
		if k.Namespace == "" || k.Name == "" || k.KeyID == "" {
			return errors.New("a usage entry of protocol 1 names its namespace, name and keyId")
		}
		*c = Compact{Key: k.Namespace + "/" + k.Name, KeyID: k.KeyID, Allowed: k.Allowed, Denied: k.Denied, Limited: k.Limited}
		if !k.LastUsed.IsZero() {
			c.LastUsed = k.LastUsed.Unix()
		}
		return nil
	}
	var a []json.RawMessage
	if err := json.Unmarshal(b, &a); err != nil || len(a) != 6 {
		return errors.New(`a usage entry is ["namespace/name", "keyId", allowed, denied, limited, lastUsed] or an object of protocol 1`)
	}
	if err := json.Unmarshal(a[0], &c.Key); err != nil {
		return err
	}
	if err := json.Unmarshal(a[1], &c.KeyID); err != nil {
		return err
	}
	for i, p := range []*uint64{&c.Allowed, &c.Denied, &c.Limited} {
		n, err := strconv.ParseUint(string(a[2+i]), 10, 64)
		if err != nil {
			return fmt.Errorf("usage entry %s: %w", c.KeyID, err)
		}
		*p = n
	}
	n, err := strconv.ParseInt(string(a[5]), 10, 64)
	c.LastUsed = n
	return err
}

// KeyCount is the entry as Fold reads it.
func (c Compact) KeyCount() (KeyCount, bool) {
	ns, name, ok := strings.Cut(c.Key, "/")
	if !ok {
		return KeyCount{}, false
	}
	k := KeyCount{Namespace: ns, Name: name, KeyID: c.KeyID, Allowed: c.Allowed, Denied: c.Denied, Limited: c.Limited}
	if c.LastUsed > 0 {
		k.LastUsed = time.Unix(c.LastUsed, 0)
	}
	return k, true
}

// Reporter builds a replica's Deltas. One collector at a time is what it
// is made for; two (a leader change) only make it send more.
type Reporter struct {
	Index   *index.Index
	Replica string

	mu   sync.Mutex
	last uint64
	// sent are the key IDs of the last report: sent again until a request
	// acknowledges it.
	sent map[string]bool
}

// Report returns the keys counted since the last report, those of the
// last report again unless ack names it, and every key when full.
func (r *Reporter) Report(ack uint64, full bool) Delta {
	r.mu.Lock()
	defer r.mu.Unlock()
	var again map[string]bool
	if ack != r.last || r.last == 0 {
		again = r.sent
	}
	r.last++
	d := Delta{Replica: r.Replica, ID: r.last, Full: full, Keys: []Compact{}}
	sent := map[string]bool{}
	r.Index.EachChanged(full, again, func(e index.Identity, u *index.Usage, _ bool) {
		c := u.Counts()
		allowed, denied := u.Totals()
		if allowed == 0 && denied == 0 {
			return
		}
		var last int64
		if t := u.LastUsed(); !t.IsZero() {
			last = t.Unix()
		}
		d.Keys = append(d.Keys, Compact{Key: e.Key(), KeyID: e.KeyID(), Allowed: allowed, Denied: denied,
			Limited: c[index.Limited], LastUsed: last})
		sent[e.KeyID()] = true
	})
	r.sent = sent
	return d
}

// Handler serves /usage: protocol 2 (?v=2&ack=ID, or &full=1) as Deltas,
// and, without v=2, the full Report of protocol 1.
func (r *Reporter) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		w.Header().Set("Content-Type", "application/json")
		if q.Get("v") != "2" {
			_ = json.NewEncoder(w).Encode(Snapshot(r.Index, r.Replica))
			return
		}
		var ack uint64
		if a := q.Get("ack"); a != "" {
			n, err := strconv.ParseUint(a, 10, 64)
			if err != nil {
				w.WriteHeader(http.StatusBadRequest)
				_, _ = w.Write([]byte(`{"reason":"malformed_request","message":"ack is the ID of the last report received"}` + "\n"))
				return
			}
			ack = n
		}
		var buf bytes.Buffer
		_ = json.NewEncoder(&buf).Encode(r.Report(ack, q.Get("full") == "1"))
		_, _ = w.Write(buf.Bytes())
	})
}
