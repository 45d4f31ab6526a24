package pool

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strconv"
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
	var auth []byte
	replies := 0
	if u.Password != "" {
		if u.Username != "" {
			auth = resp.AppendCommand(auth, []byte("AUTH"), []byte(u.Username), []byte(u.Password))
		} else {
			auth = resp.AppendCommand(auth, []byte("AUTH"), []byte(u.Password))
		}
		replies++
	}
	if u.DB != 0 {
		auth = resp.AppendCommand(auth, []byte("SELECT"), []byte(strconv.Itoa(u.DB)))
		replies++
	}
	if replies == 0 {
		return nc, nil
	}
	deadline, _ := ctx.Deadline()
	_ = nc.SetDeadline(deadline)
	defer nc.SetDeadline(time.Time{})
	if _, err := nc.Write(auth); err != nil {
		nc.Close()
		return nil, err
	}
	// The replies are short status lines; read them with a small reader that
	// is dropped afterwards, so no byte of the stream is left behind in it:
	// nothing else is sent until the login is answered.
	rd := bufio.NewReaderSize(nc, 512)
	for i := 0; i < replies; i++ {
		line, err := rd.ReadString('\n')
		if err != nil {
			nc.Close()
			return nil, err
		}
		if len(line) > 0 && line[0] == '-' {
			nc.Close()
			return nil, fmt.Errorf("login refused: %s", resp.Quote([]byte(line[1:len(line)-2]), 200))
		}
	}
	return nc, nil
}
