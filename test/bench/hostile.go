package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// hostile is load meant to exhaust the endpoint rather than use it:
// keep-alive connections left idle, connections that never finish their
// request headers (slowloris), and a flood of invalid keys.
type hostile struct {
	addr    string
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	idle    []net.Conn
	flooded atomic.Int64
	slowNew atomic.Int64
}

func newHostile(addr string) *hostile { return &hostile{addr: addr, stop: make(chan struct{})} }

const hostileRequest = "GET /authn HTTP/1.1\r\nHost: keyward\r\nX-Api-Key: kw_0000000000000000_not-a-key\r\n\r\n"

// openIdle opens n keep-alive connections, each after one request, and
// leaves them idle; every 20 s (under the server's idle timeout) each sends
// one more, as a patient attacker would to keep them.
func (h *hostile) openIdle(n int) error {
	for i := range n {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			return fmt.Errorf("idle connection %d: %w", i, err)
		}
		if err := roundTrip(c); err != nil {
			c.Close()
			return fmt.Errorf("idle connection %d: %w", i, err)
		}
		h.mu.Lock()
		h.idle = append(h.idle, c)
		h.mu.Unlock()
	}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		t := time.NewTicker(20 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-t.C:
				h.mu.Lock()
				for _, c := range h.idle {
					_ = roundTrip(c)
				}
				h.mu.Unlock()
			}
		}
	}()
	return nil
}

func roundTrip(c net.Conn) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, hostileRequest); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return c.SetDeadline(time.Time{})
}

// slowHeaders keeps n connections sending a request's headers one short
// line a second, never finishing; when the server closes one, it opens
// another.
func (h *hostile) slowHeaders(n int) {
	for range n {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			for {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					select {
					case <-h.stop:
						return
					case <-time.After(100 * time.Millisecond):
						continue
					}
				}
				h.slowNew.Add(1)
				_, err = io.WriteString(c, "GET /authn HTTP/1.1\r\nHost: keyward\r\n")
				for err == nil {
					select {
					case <-h.stop:
						c.Close()
						return
					case <-time.After(time.Second):
						_, err = io.WriteString(c, "X-Slow: a\r\n")
					}
				}
				c.Close()
			}
		}()
	}
}

// flood sends invalid keys at perSecond, pipelined in batches every 10 ms
// over two connections: written from prepared bytes and counted by their
// status lines, so the flood costs the load CPU little beside wrk.
func (h *hostile) flood(perSecond int) {
	var reqs [256][]byte
	for i := range reqs {
		reqs[i] = fmt.Appendf(nil, "GET /authn HTTP/1.1\r\nHost: keyward\r\nX-Api-Key: kw_%016d_%s\r\n\r\n", i, strings.Repeat("x", 49))
	}
	const conns = 2
	perBatch := max(1, perSecond/100/conns)
	for w := range conns {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			for {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					return
				}
				go func() {
					sc := bufio.NewScanner(c)
					for sc.Scan() {
						if strings.HasPrefix(sc.Text(), "HTTP/1.1 ") {
							h.flooded.Add(1)
						}
					}
				}()
				t := time.NewTicker(10 * time.Millisecond)
				var batch []byte
				for i := w; err == nil; {
					select {
					case <-h.stop:
						t.Stop()
						c.Close()
						return
					case <-t.C:
					}
					batch = batch[:0]
					for range perBatch {
						batch = append(batch, reqs[i%len(reqs)]...)
						i++
					}
					_, err = c.Write(batch)
				}
				t.Stop()
				c.Close()
			}
		}()
	}
}

// close stops every attack and closes its connections.
func (h *hostile) close() {
	close(h.stop)
	h.mu.Lock()
	for _, c := range h.idle {
		c.Close()
	}
	h.mu.Unlock()
	h.wg.Wait()
}
