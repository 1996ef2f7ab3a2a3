// Command noop is the baseline of `make bench`: HTTP servers whose handler
// does nothing (net/http's, and keyward's own fasthttp server), and a gRPC
// ext_authz server that allows everything, so keyward's throughput is read
// as a ratio against the cheapest possible answer on the same machine in
// the same run.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/valyala/fasthttp"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"keyward.dev/keyward/internal/serve"
)

type allowAll struct {
	authv3.UnimplementedAuthorizationServer
}

func (allowAll) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return &authv3.CheckResponse{Status: &rpcstatus.Status{}}, nil
}

func main() {
	httpAddr := flag.String("http-address", "127.0.0.1:9180", "")
	grpcAddr := flag.String("grpc-address", "127.0.0.1:9181", "")
	fastAddr := flag.String("fasthttp-address", "127.0.0.1:9182", "the empty handler on keyward's own HTTP server")
	pprofAddr := flag.String("pprof-address", "", "serve /debug/pprof/ here (to compare profiles with keyward's)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { log.Fatal(http.ListenAndServe(*pprofAddr, nil)) }() // net/http/pprof's handlers
	}
	l, err := net.Listen("tcp", *grpcAddr)
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, allowAll{})
	go func() { log.Fatal(gs.Serve(l)) }()
	// keyward's HTTP server (fasthttp, its settings) with a handler that
	// does nothing: the ratio against it is the cost of the check alone.
	fast := (&serve.Server{}).HTTPServer()
	fast.Handler = func(*fasthttp.RequestCtx) {}
	go func() { log.Fatal(fast.ListenAndServe(*fastAddr)) }()
	// The plainest Go HTTP server: net/http, an empty handler, the
	// settings keyward's endpoint had on net/http. The target is
	// against this one.
	srv := &http.Server{Addr: *httpAddr, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 2 * time.Minute,
		Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})}
	log.Fatal(srv.ListenAndServe())
}
