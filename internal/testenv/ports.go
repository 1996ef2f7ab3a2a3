package testenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
)

// FreeAddr is a 127.0.0.1 address with a port nothing listens on, for a
// server the test starts next.
//
// Not a port the kernel hands out for ":0": those come from the ephemeral
// range, which is also where every outgoing connection takes its local
// port, so between closing the probe listener and the server's bind one of
// the hundreds of API-server connections that make test opens could take
// it, and the server would fail with "address already in use" (a readiness
// wait in internal/app once timed out that way, cause unseen then). Ports
// below the ephemeral range are only taken by a listener that asks for one
// by number: another test doing this, at random, so rarely the same one.
func FreeAddr() (string, error) {
	low := ephemeralLow()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 10000+rand.IntN(low-10000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: draw again
		}
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("no free port below %d in 100 draws", low)
}

// ephemeralLow is the first port of the kernel's ephemeral range (Linux's
// default when it cannot be read).
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		var hi int
		if _, err := fmt.Sscan(string(b), &low, &hi); err != nil || low <= 11000 {
			low = 32768
		}
	}
	return low
}
