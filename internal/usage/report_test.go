package usage

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
)

func TestSnapshotAndMetrics(t *testing.T) {
	ix := index.New()
	nn := types.NamespacedName{Namespace: "team-a", Name: "reader"}
	k, _ := keys.Generate()
	idle, _ := keys.Generate()
	ix.SetApiKey(nn, &index.ApiKey{UID: testUID(nn), Scopes: []string{"a"}})
	ix.SetRecord(nn, &index.Record{Owner: testUID(nn), Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}, {ID: idle.ID, Digest: idle.Digest()}}})
	used := time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)
	e, _ := ix.Lookup(k.ID)
	ix.Count(e.Identity, index.Allowed, used.Add(-time.Minute))
	ix.Count(e.Identity, index.Allowed, used)
	ix.Count(e.Identity, index.InsufficientScope, used.Add(time.Minute))

	r := Snapshot(ix, "replica-1")
	if r.Replica != "replica-1" || len(r.Keys) != 1 {
		t.Fatalf("report %+v: want the one key with calls", r)
	}
	if c := r.Keys[0]; c.Namespace != "team-a" || c.Name != "reader" || c.KeyID != k.ID ||
		c.Allowed != 2 || c.Denied != 1 || !c.LastUsed.Equal(used) {
		t.Fatalf("count %+v", c)
	}

	want := `
# HELP keyward_apikey_checks_total Checks of each key by this endpoint replica since it started, by decision.
# TYPE keyward_apikey_checks_total counter
keyward_apikey_checks_total{decision="allowed",key_id="` + k.ID + `",name="reader",namespace="team-a"} 2
keyward_apikey_checks_total{decision="insufficient_scope",key_id="` + k.ID + `",name="reader",namespace="team-a"} 1
`
	if err := testutil.CollectAndCompare(NewMetrics(ix), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// testUID is the UID of the ApiKey nn and of its record's owner reference:
// the index serves a record only while the two agree.
func testUID(nn types.NamespacedName) types.UID { return types.UID("uid-" + nn.String()) }
