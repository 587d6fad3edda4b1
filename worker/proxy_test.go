package worker_test

import (
	"net"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// proxy forwards TCP connections to a server on loopback. freeze holds every
// byte in both directions without closing anything, as a stalled network
// does; thaw lets it all through. cut closes every connection and refuses new
// ones, as a server that went away; restore accepts them again. freezeDown
// holds only what the server sends, as a slow link to the client does.
type proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	thawed chan struct{} // closed while traffic flows
	// downThawed is closed while the server's bytes to the client flow.
	downThawed chan struct{}
	cutOff     bool
	conns      []net.Conn
	wg         sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, thawed: make(chan struct{}), downThawed: make(chan struct{})}
	close(p.thawed)
	close(p.downThawed)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		p.thaw()
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.cutOff {
			p.mu.Unlock()
			_ = c.Close()
			_ = s.Close()
			continue
		}
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, s, true)
		go p.pipe(s, c, false)
	}
}

// pipe copies src to dst; down: from the server to the client.
func (p *proxy) pipe(dst, src net.Conn, down bool) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			thawed, downThawed := p.thawed, p.downThawed
			p.mu.Unlock()
			<-thawed
			if down {
				<-downThawed
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default:
	}
}

func (p *proxy) freezeDown() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.downThawed:
		p.downThawed = make(chan struct{})
	default:
	}
}

// thaw lets everything through, after freeze or freezeDown.
func (p *proxy) thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range []*chan struct{}{&p.thawed, &p.downThawed} {
		select {
		case <-*c:
		default:
			close(*c)
		}
	}
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *proxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutOff = false
}
