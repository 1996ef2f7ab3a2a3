// Command inproc serves keyward's forward auth from an index filled in
// process with synthetic keys: no API server, so a profile or a layout
// change of the index can be tried under wrk in seconds rather than after
// the minutes `make bench` takes to create 100,000 ApiKeys. It writes the
// tokens (one a line) for test/bench/tokens.lua. The numbers that count are
// `make bench`'s; this is the quick loop beside it.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"k8s.io/apimachinery/pkg/types"

	"keyward.dev/keyward/internal/authn"
	"keyward.dev/keyward/internal/index"
	"keyward.dev/keyward/internal/keys"
	"keyward.dev/keyward/internal/serve"
)

func main() {
	n := flag.Int("keys", 100000, "keys in the index")
	addr := flag.String("http-address", "127.0.0.1:8380", "forward auth")
	debugAddr := flag.String("debug-address", "127.0.0.1:8390", "/metrics and /debug/pprof/")
	tokens := flag.String("tokens", "", "write 10,000 of the tokens, spread over the index, here")
	handler := flag.String("handler", "keyward", "keyward; or, to calibrate against keyward's answer: "+
		"headers (net/http, a handler that only sets three identity headers of the same size), "+
		"fasthttp-headers (the same on keyward's server), fasthttp-empty (an empty handler on keyward's server)")
	flag.Parse()

	ix := index.New()
	var sample []string
	every := max(*n/10000, 1)
	for i := range *n {
		k, err := keys.Generate()
		if err != nil {
			log.Fatal(err)
		}
		nn := types.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("k%06d", i)}
		ix.SetApiKey(nn, &index.ApiKey{UID: testUID(nn), Scopes: []string{"bench:read", "bench:write"}})
		ix.SetRecord(nn, &index.Record{Owner: testUID(nn), Keys: []index.Key{{ID: k.ID, Digest: k.Digest()}}})
		if i%every == 0 {
			sample = append(sample, k.Token()) // spread over the index, as production lookups are
		}
	}
	ix.MarkSynced()
	if *tokens != "" {
		if err := os.WriteFile(*tokens, []byte(strings.Join(sample, "\n")+"\n"), 0o600); err != nil {
			log.Fatal(err)
		}
	}
	sample = nil
	runtime.GC()
	debug.FreeOSMemory()

	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGoCollector())
	s := &serve.Server{Decider: &authn.Decider{Index: ix}, Metrics: serve.NewMetrics(reg)}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go func() { log.Fatal(http.ListenAndServe(*debugAddr, mux)) }()
	log.Printf("%d keys, serving on %s", ix.Len(), *addr)
	setHeaders := func(set func(k, v string)) {
		set(serve.HeaderKeyID, "0123456789abcdef")
		set(serve.HeaderKey, "bench/k000000")
		set(serve.HeaderScopes, "bench:read,bench:write")
	}
	// The calibration servers differ from keyward's in their handler only.
	fast := s.HTTPServer()
	switch *handler {
	case "keyward":
	case "fasthttp-empty":
		fast.Handler = func(*fasthttp.RequestCtx) {}
	case "fasthttp-headers":
		fast.Handler = func(ctx *fasthttp.RequestCtx) { setHeaders(ctx.Response.Header.Set) }
	case "headers":
		// net/http with the settings keyward's endpoint had on it.
		srv := &http.Server{Addr: *addr, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
			Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { setHeaders(w.Header().Set) })}
		log.Fatal(srv.ListenAndServe())
	default:
		log.Fatalf("unknown --handler %q", *handler)
	}
	log.Fatal(fast.ListenAndServe(*addr))
}

// testUID is the UID of the ApiKey nn and of its record's owner reference:
// the index serves a record only while the two agree.
func testUID(nn types.NamespacedName) types.UID { return types.UID("uid-" + nn.String()) }
