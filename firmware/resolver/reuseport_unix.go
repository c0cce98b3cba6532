//go:build linux || darwin || freebsd || netbsd || openbsd

package resolver

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// reusePort lets several UDP sockets share the port so the kernel spreads
// queries over one reader per core.
func reusePort(network, address string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

const haveReusePort = true
