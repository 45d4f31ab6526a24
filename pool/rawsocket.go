package pool

import (
	"net"
	"syscall"
)

// A plain upstream socket is read (replyReader) and written
// (requestWriter) through its RawConn with nbio's raw system calls; TLS
// goes through the net.Conn.

// rawSocket returns nc's socket for reading and writing it directly (with
// nbio's raw system calls), or nil when nc is not a plain TCP or unix
// socket (TLS).
func rawSocket(nc net.Conn) syscall.RawConn {
	if cc, ok := nc.(countedConn); ok {
		nc = cc.Conn
	}
	var sc syscall.Conn
	switch c := nc.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// rawError gives the error of a read or write made through a RawConn the
// form net.Conn's own would have ("read tcp a->b: i/o timeout"), for the
// logs: RawConn says "raw-read" and "raw-write", and a system call's
// error has no addresses.
func rawError(nc net.Conn, op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		err = oe.Err
	}
	return &net.OpError{Op: op, Net: nc.LocalAddr().Network(), Source: nc.LocalAddr(), Addr: nc.RemoteAddr(), Err: err}
}
