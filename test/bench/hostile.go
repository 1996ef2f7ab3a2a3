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

	"golang.org/x/time/rate"
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

// flood sends invalid keys at perSecond over a few keep-alive
// connections, as fast as the server answers up to that rate.
func (h *hostile) flood(perSecond int) {
	lim := rate.NewLimiter(rate.Limit(perSecond), perSecond/100+1)
	for w := range 4 {
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			tr := &http.Transport{MaxIdleConnsPerHost: 1}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			for i := 0; ; i++ {
				select {
				case <-h.stop:
					return
				default:
				}
				if lim.Wait(waitCtx{h.stop}) != nil {
					return
				}
				req, _ := http.NewRequest("GET", "http://"+h.addr+"/authn", nil)
				req.Header.Set("X-Api-Key", fmt.Sprintf("kw_%016d_%s", w*1e9+i, strings.Repeat("x", 49)))
				if resp, err := c.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					h.flooded.Add(1)
				}
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

// waitCtx is a context.Context that is done when stop closes (for
// rate.Limiter.Wait).
type waitCtx struct{ stop chan struct{} }

func (w waitCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (w waitCtx) Done() <-chan struct{}       { return w.stop }
func (w waitCtx) Err() error {
	select {
	case <-w.stop:
		return errStopped
	default:
		return nil
	}
}
func (w waitCtx) Value(any) any { return nil }

var errStopped = fmt.Errorf("stopped")
