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

// dial connects, runs the TLS handshake, and logs in: AUTH when there is a
// password and SELECT when the db is not 0, sent together in one round trip.
// Nothing else is sent, because every command is billed.
func (u Upstream) dial(ctx context.Context, timeout time.Duration) (net.Conn, error) {
	return u.connect(ctx, timeout, true)
}

// connect is dial, with the login optional: a readiness probe connects
// without logging in, because AUTH would be billed.
func (u Upstream) connect(ctx context.Context, timeout time.Duration, login bool) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, u.Network, u.Addr)
	if err != nil {
		return nil, err
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
	if !login {
		return nc, nil
	}
	hello, replies := u.loginCommands()
	if replies == 0 {
		return nc, nil
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(hello); err != nil {
		nc.Close()
		return nil, err
	}
	if err := readLoginReplies(nc, replies); err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// loginCommands returns what a new connection sends before any request:
// HELLO 3 (with AUTH) for RESP3, else AUTH when there is a password; then
// SELECT when the db is not 0. It also returns how many replies they get.
func (u Upstream) loginCommands() ([]byte, int) {
	var b []byte
	replies := 0
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
		replies++
	case u.Password != "" && u.Username != "":
		b = resp.AppendCommand(b, []byte("AUTH"), []byte(u.Username), []byte(u.Password))
		replies++
	case u.Password != "":
		b = resp.AppendCommand(b, []byte("AUTH"), []byte(u.Password))
		replies++
	}
	if u.DB != 0 {
		b = resp.AppendCommand(b, []byte("SELECT"), []byte(strconv.Itoa(u.DB)))
		replies++
	}
	return b, replies
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

// readLoginReplies reads exactly n replies and fails on an error reply.
// Nothing else is sent until the login is answered, so no byte past the
// last reply can arrive and nothing read here belongs to a later request.
func readLoginReplies(nc net.Conn, n int) error {
	buf := make([]byte, 0, 512)
	var scan resp.ReplyScanner
	for n > 0 {
		m, err := scan.Scan(buf)
		switch {
		case err != nil:
			return err
		case m > 0:
			if buf[0] == '-' || buf[0] == '!' {
				return &LoginError{Reply: string(bytes.TrimSpace(buf[1:m]))}
			}
			buf = buf[m:]
			n--
			continue
		}
		if len(buf) == cap(buf) {
			buf = append(buf, make([]byte, cap(buf))...)[:len(buf)]
		}
		k, err := nc.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+k]
		if err != nil {
			return err
		}
	}
	if len(buf) > 0 {
		return fmt.Errorf("login: unexpected bytes after the replies: %s", resp.Quote(buf, 64))
	}
	return nil
}
