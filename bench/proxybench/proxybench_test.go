package proxybench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/proxy"
	"github.com/hachat/hachat/telemetry"
)

// TestMain turns the test binary into an echo server when the benchmark
// starts it as a child process (the role `hachat bench echo-server` plays).
func TestMain(m *testing.M) {
	switch os.Getenv("PROXYBENCH_CHILD") {
	case "":
		os.Exit(m.Run())
	case "echo":
		fs := flag.NewFlagSet("echo", flag.ExitOnError)
		addr := fs.String("addr", "", "")
		var st EchoStatus
		fs.StringVar(&st.Name, "name", "", "")
		fs.StringVar(&st.Role, "role", "", "")
		fs.Uint64Var(&st.Epoch, "epoch", 0, "")
		files := childTLSFlags(fs)
		fs.Parse(childArgs())
		var cfg *tls.Config
		if files.Enabled() {
			src, err := mtls.Load(*files)
			if err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			cfg = src.ServerConfig()
		}
		if err := ServeEcho(context.Background(), *addr, st, cfg); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	case "sidecar":
		fs := flag.NewFlagSet("sidecar", flag.ExitOnError)
		listen := fs.String("listen", "", "")
		admin := fs.String("admin", "", "")
		primary := fs.String("primary", "", "")
		backup := fs.String("backup", "", "")
		files := childTLSFlags(fs)
		fs.Parse(childArgs())
		if err := ServeSidecar(context.Background(), *listen, *admin, *primary, *backup, *files); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
	}
	os.Exit(0)
}

// childArgs are the arguments after "--".
func childArgs() []string {
	for i, a := range os.Args {
		if a == "--" {
			return os.Args[i+1:]
		}
	}
	return nil
}

func echoOptions(t *testing.T) Options {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return Options{
		EchoCommand:    []string{"/usr/bin/env", "PROXYBENCH_CHILD=echo", exe, "--"},
		SidecarCommand: []string{"/usr/bin/env", "PROXYBENCH_CHILD=sidecar", exe, "--"},
	}
}

func TestServeEchoSniffsGRPC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serveEcho(ctx, ln, EchoStatus{Name: "p", Role: "primary", Epoch: 7}, nil) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serveEcho: %v", err)
		}
	}()
	addr := ln.Addr().String()

	// Raw echo, including a payload that starts like the preface but is not.
	for _, msg := range []string{"hello", "PRIVATE data", "P"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte(msg))
		if msg == "P" {
			c.(*net.TCPConn).CloseWrite()
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, []byte(msg)) {
			t.Fatalf("echo %q: got %q, %v", msg, got, err)
		}
		c.Close()
	}
	// gRPC Status on the same port.
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
	defer scancel()
	resp, err := chatpb.NewChatClient(cc).Status(sctx, &chatpb.StatusRequest{})
	if err != nil || resp.GetName() != "p" || resp.GetRole() != "primary" || resp.GetEpoch() != 7 {
		t.Fatalf("status = %v, %v", resp, err)
	}
}

// childTLSFlags are the --tls-* flags of the child processes.
func childTLSFlags(fs *flag.FlagSet) *mtls.Files {
	var f mtls.Files
	fs.StringVar(&f.CA, "tls-ca", "", "")
	fs.StringVar(&f.Cert, "tls-cert", "", "")
	fs.StringVar(&f.Key, "tls-key", "", "")
	return &f
}

func TestRunSmall(t *testing.T) {
	runSmall(t, false)
}

// TestRunSmallTLS: the benchmark runs with mTLS on every hop.
func TestRunSmallTLS(t *testing.T) {
	runSmall(t, true)
}

func runSmall(t *testing.T, withTLS bool) {
	o := echoOptions(t)
	o.TLS = withTLS
	o.Duration = 300 * time.Millisecond
	o.Conns = 2
	o.Trials = 2
	var log bytes.Buffer
	o.Log = &log
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Logf("\n%s", text.String())
	for _, r := range []Result{rep.Direct, rep.Sidecar} {
		if r.Requests == 0 || r.Errors != 0 || r.P50 <= 0 || r.P99 < r.P50 {
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if rep.HAProxyError == "" && (rep.HAProxy == nil || rep.HAProxy.Requests == 0 || rep.HAProxyFailover == nil) {
		t.Errorf("haproxy ran but was not measured: %+v", rep.HAProxy)
	}
	if len(rep.SidecarFailover.Trials) != 2 || rep.SidecarFailover.Max <= 0 || rep.SidecarFailover.Max > 5*time.Second {
		t.Errorf("sidecar failover: %+v", rep.SidecarFailover)
	}
	if !strings.Contains(text.String(), "sidecar/direct") {
		t.Errorf("text report lacks ratios:\n%s", text.String())
	}
}

// TestRunFull is the full benchmark, run on demand:
// PROXYBENCH_FULL=1 go test -run TestRunFull -v ./bench/proxybench
func TestRunFull(t *testing.T) {
	if os.Getenv("PROXYBENCH_FULL") == "" {
		t.Skip("set PROXYBENCH_FULL=1 to run the full proxy benchmark")
	}
	o := echoOptions(t)
	o.Trials = 10
	o.Log = os.Stderr
	rep, err := Run(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	var text bytes.Buffer
	rep.WriteText(&text)
	t.Logf("\n%s", text.String())
}

// FuzzIsPreface checks the sniffer against the plain definition: a
// connection is gRPC exactly when its bytes start with the HTTP/2 preface.
func FuzzIsPreface(f *testing.F) {
	f.Add([]byte(http2Preface + "rest"))
	f.Add([]byte("PRI * HTTP/1.1"))
	f.Add([]byte("P"))
	f.Add([]byte("hello"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := bytes.HasPrefix(b, []byte(http2Preface))
		for _, r := range []io.Reader{bytes.NewReader(b), iotest.OneByteReader(bytes.NewReader(b)), iotest.HalfReader(bytes.NewReader(b))} {
			if got := isPreface(bufio.NewReader(r)); got != want {
				t.Fatalf("isPreface(%q) = %v, want %v", b, got, want)
			}
		}
	})
}

// BenchmarkSidecarRoundTrip measures one 64-byte round trip through an
// in-process sidecar to an in-process echo server (for profiling the data
// path: go test -bench Sidecar -cpuprofile cpu.out ./bench/proxybench).
func BenchmarkSidecarRoundTrip(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go serveEcho(ctx, ln, EchoStatus{Name: "p", Role: "primary", Epoch: 1}, nil)
	cfg := proxy.DefaultConfig()
	cfg.Listen, cfg.Admin = "127.0.0.1:0", ""
	p, err := proxy.NewStatic(cfg, telemetry.Discard(), Resources(ln.Addr().String(), "127.0.0.1:1"))
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	if err := waitUntil(ctx, 5*time.Second, func() bool { return p.Dump().Clusters[0].Definitive }); err != nil {
		b.Fatal(err)
	}
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", p.Addr().String())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		payload := makePayload(64)
		buf := make([]byte, 64)
		for pb.Next() {
			if _, err := c.Write(payload); err != nil {
				b.Error(err)
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
