//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package resolver

import "syscall"

// reusePort is a no-op where SO_REUSEPORT is unavailable: one socket.
func reusePort(network, address string, c syscall.RawConn) error { return nil }

const haveReusePort = false
