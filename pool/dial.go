package pool

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/funnel-proxy/funnel/resp"
	"github.com/redis/go-redis/v9"
)

// Upstream says where the real Redis is and how to log in to it.
type Upstream struct {
	Network  string // "tcp" or "unix"
	Addr     string
	Username string
	Password string
	DB       int
	TLS      *tls.Config // nil for plain TCP
	// Proto is the RESP version the connections speak: 2 (or 0) for RESP2,
	// 3 for RESP3, which the login asks for with HELLO 3.
	Proto int
}

// TLSOptions adjust TLS to the upstream beyond what the URL says.
type TLSOptions struct {
	CAFile             string // PEM bundle to trust instead of the system roots
	InsecureSkipVerify bool   // accept any certificate; for tests only
}

// ParseURL reads a redis:// or rediss:// URL (with user, password and db)
// with go-redis's parser. rediss:// verifies the server's certificate unless
// tlsOpts says otherwise.
func ParseURL(url string, tlsOpts TLSOptions) (Upstream, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return Upstream{}, fmt.Errorf("pool: upstream url: %w", err)
	}
	u := Upstream{Network: o.Network, Addr: o.Addr, Username: o.Username, Password: o.Password, DB: o.DB, TLS: o.TLSConfig}
	if u.Network == "" {
		u.Network = "tcp"
	}
	if u.TLS != nil {
		u.TLS = u.TLS.Clone()
		u.TLS.InsecureSkipVerify = tlsOpts.InsecureSkipVerify
		if tlsOpts.CAFile != "" {
			pem, err := os.ReadFile(tlsOpts.CAFile)
			if err != nil {
				return Upstream{}, fmt.Errorf("pool: tls ca file: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				return Upstream{}, fmt.Errorf("pool: tls ca file %s holds no PEM certificate", tlsOpts.CAFile)
			}
			u.TLS.RootCAs = roots
		}
	}
	return u, nil
}

// String returns the address without credentials, for logs.
func (u Upstream) String() string {
	scheme := "redis"
	if u.TLS != nil {
		scheme = "rediss"
	}
	return scheme + "://" + u.Addr + "/" + strconv.Itoa(u.DB)
}

// dial connects, runs the TLS handshake, and logs in (see loginCommands),
// sending the login in one round trip. With wantID it also asks the
// upstream for the connection's CLIENT ID and returns it (0 if refused).
// Nothing else is sent, because every command is billed. wrap is applied
// to the connection once it is up (after TLS), before the login.
func (u Upstream) dial(ctx context.Context, timeout time.Duration, wantID bool, wrap func(net.Conn) net.Conn, bill func(name string)) (net.Conn, int64, error) {
	nc, err := u.connect(ctx, timeout)
	if err != nil {
		return nil, 0, err
	}
	nc = wrap(nc)
	login, names := u.loginCommands(wantID)
	if len(names) == 0 {
		return nc, 0, nil
	}
	deadline, _ := ctx.Deadline()
	if d := time.Now().Add(timeout); deadline.IsZero() || d.Before(deadline) {
		deadline = d
	}
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(login); err != nil {
		nc.Close()
		return nil, 0, err
	}
	for _, name := range names {
		bill(name)
	}
	replies, err := readLoginReplies(nc, len(names))
	if err != nil {
		nc.Close()
		return nil, 0, err
	}
	var id int64
	for i, name := range names {
		r := replies[i]
		switch {
		case name == "client|id":
			id, _ = resp.Int(r) // an upstream without CLIENT ID only loses CLIENT UNBLOCK
		case resp.IsError(r):
			nc.Close()
			return nil, 0, &LoginError{Reply: string(bytes.TrimSpace(r[1:]))}
		case name == "hello" && wantID:
			id = helloID(r)
		}
		if resp.IsError(r) {
			nc.Close()
			return nil, 0, &LoginError{Reply: string(bytes.TrimSpace(r[1:]))}
		}
	}
	return nc, id, nil
}

// connect opens the connection and runs the TLS handshake, without the
// login: a readiness probe stops there, because AUTH would be billed.
func (u Upstream) connect(ctx context.Context, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, u.Network, u.Addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetKeepAlive(true)
	}
	if u.TLS != nil {
		cfg := u.TLS
		if cfg.ServerName == "" {
			cfg = cfg.Clone()
			cfg.ServerName, _, _ = net.SplitHostPort(u.Addr)
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		nc = tc
	}
	return nc, nil
}

// loginCommands returns what a new connection sends before any request:
// HELLO 3 (with AUTH) for RESP3, else AUTH when there is a password; then
// SELECT when the db is not 0; then, with wantID, CLIENT ID, unless HELLO's
// reply carries the id already. It also returns the command names, one per
// reply, for the bill.
func (u Upstream) loginCommands(wantID bool) ([]byte, []string) {
	var b []byte
	var names []string
	switch {
	case u.Proto == 3:
		args := [][]byte{[]byte("HELLO"), []byte("3")}
		if u.Password != "" {
			user := u.Username
			if user == "" {
				user = "default"
			}
			args = append(args, []byte("AUTH"), []byte(user), []byte(u.Password))
		}
		b = resp.AppendCommand(b, args...)
		names = append(names, "hello")
	case u.Password != "" && u.Username != "":
		b = resp.AppendCommand(b, []byte("AUTH"), []byte(u.Username), []byte(u.Password))
		names = append(names, "auth")
	case u.Password != "":
		b = resp.AppendCommand(b, []byte("AUTH"), []byte(u.Password))
		names = append(names, "auth")
	}
	if u.DB != 0 {
		b = resp.AppendCommand(b, []byte("SELECT"), []byte(strconv.Itoa(u.DB)))
		names = append(names, "select")
	}
	if wantID && u.Proto != 3 {
		b = resp.AppendCommand(b, []byte("CLIENT"), []byte("ID"))
		names = append(names, "client|id")
	}
	return b, names
}

// helloID returns the "id" field of a HELLO reply, or 0. The reply is a map
// whose fields before "modules" are all scalars, and "id" comes first.
func helloID(reply []byte) int64 {
	fields := resp.LeadingFields(reply)
	for i := 0; i+1 < len(fields); i += 2 {
		if string(fields[i]) == "id" {
			id, _ := strconv.ParseInt(string(fields[i+1]), 10, 64)
			return id
		}
	}
	return 0
}

// LoginError is the upstream's error reply to a new connection's login
// (AUTH, HELLO 3 or SELECT).
type LoginError struct {
	Reply string // the error text, without '-' and CRLF
}

func (e *LoginError) Error() string {
	return "login refused: " + resp.Quote([]byte(e.Reply), 200)
}

// RefusesRESP3 reports whether the upstream turned down HELLO 3 itself: it
// has no HELLO (Redis 5) or RESP3 is switched off.
func (e *LoginError) RefusesRESP3() bool {
	return strings.HasPrefix(e.Reply, "NOPROTO") || strings.HasPrefix(e.Reply, "ERR unknown command")
}

// readLoginReplies reads exactly n replies. Nothing else is sent until the
// login is answered, so no byte past the last reply can arrive and nothing
// read here belongs to a later request.
func readLoginReplies(nc net.Conn, n int) ([][]byte, error) {
	buf := make([]byte, 0, 512)
	var scan resp.ReplyScanner
	var replies [][]byte
	for len(replies) < n {
		m, err := scan.Scan(buf)
		switch {
		case err != nil:
			return nil, err
		case m > 0:
			replies = append(replies, buf[:m:m])
			buf = buf[m:]
			continue
		}
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		k, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			return nil, err
		}
	}
	if len(buf) > 0 {
		return nil, fmt.Errorf("login: unexpected bytes after the replies: %s", resp.Quote(buf, 64))
	}
	return replies, nil
}
