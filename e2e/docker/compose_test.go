//go:build docker

package docker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/hachat/hachat/e2e/harness"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/ucsmock"
)

func TestMain(m *testing.M) { harness.Main(m) }

// project is one docker-compose project of deploy/compose.yaml, with its
// own name, private subnet and host ports, so that runs never collide.
type project struct {
	t    testing.TB
	root string // module root: docker-compose runs there
	name string // docker-compose -p
	env  []string

	// Subnet is the first three octets of the project's private /24.
	Subnet string
	// WebAPI, Interaction and UCS are the published base URLs on 127.0.0.1.
	WebAPI, Interaction, UCS string
	// ServiceToken, AdminToken, UCSReaderToken and Service are what the
	// cluster was given.
	ServiceToken, AdminToken, UCSReaderToken, Service string
	// CertDir is the project's cert dir (HACHAT_CERT_DIR): the certs
	// service fills it at up; the test reads UCS as the operator.
	CertDir string
}

// ucsClient returns a UCS client that reads as the operator (mTLS with the
// certificate the certs service issued) with the reader token.
func (p *project) ucsClient(t testing.TB) *ucsmock.Client {
	t.Helper()
	src, err := mtls.Load(mtls.FilesIn(p.CertDir, "operator"))
	if err != nil {
		t.Fatalf("operator certificate of the compose cluster: %v", err)
	}
	return ucsmock.NewClient(p.UCS, src.HTTPClient(mtls.Allow(mtls.KindUCS), 10*time.Second), nil).WithToken(p.UCSReaderToken)
}

// Timeouts of the docker and docker-compose commands.
const (
	upTimeout   = 90 * time.Second
	downTimeout = 60 * time.Second
	cmdTimeout  = 30 * time.Second
)

// requireDocker fails the test when the docker engine or docker-compose is
// missing: whoever asked for -tags docker asked for this test to run.
func requireDocker(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"docker", "docker-compose"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not found in PATH: this test needs Docker and docker-compose (1.29)", bin)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Fatalf("docker engine not reachable: %v\n%s", err, out)
	}
}

// image returns the image to run: $HACHAT_DOCKER_IMAGE as it is when set,
// otherwise hachat:dev built now from the tree under test (the binary that
// harness.Binary builds, copied into the repository's Dockerfile: the same
// image `make image` builds, never a stale one).
func image(t testing.TB, root string) string {
	t.Helper()
	if img := os.Getenv("HACHAT_DOCKER_IMAGE"); img != "" {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if out, err := exec.CommandContext(ctx, "docker", "image", "inspect", img).CombinedOutput(); err != nil {
			t.Fatalf("HACHAT_DOCKER_IMAGE=%s: image not found (run make image): %v\n%s", img, err, lastLines(string(out), 5))
		}
		return img
	}
	const img = "hachat:dev"
	bin := harness.Binary(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ from, to string }{{bin, filepath.Join(dir, "bin", "hachat")}, {filepath.Join(root, "Dockerfile"), filepath.Join(dir, "Dockerfile")}} {
		b, err := os.ReadFile(c.from)
		if err != nil {
			t.Fatalf("image context: %v", err)
		}
		if err := os.WriteFile(c.to, b, 0o755); err != nil {
			t.Fatalf("image context: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	imageID := func() string {
		out, err := exec.CommandContext(ctx, "docker", "image", "inspect", "-f", "{{.Id}}", img).Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	old := imageID()
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "docker", "build", "-q", "-t", img, dir).CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Logf("built image %s in %v", img, time.Since(start).Round(time.Millisecond))
	// The tag moved to the new build: remove the image it replaced, unless
	// something still uses it (docker refuses, which is fine).
	if old != "" && old != imageID() {
		_ = exec.CommandContext(ctx, "docker", "image", "rm", old).Run()
	}
	return img
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProject brings deploy/compose.yaml up under a unique project name,
// on free host ports and a random private subnet (another one when Docker
// says the subnet overlaps an existing network). Cleanup dumps the logs if
// the test failed and always runs `docker-compose down -v`.
func startProject(t testing.TB, root, img string) *project {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 4; attempt++ {
		p := newProject(t, root, img)
		err := p.up()
		if err == nil {
			return p
		}
		lastErr = err
		p.down()
		msg := err.Error()
		if !strings.Contains(msg, "overlap") && !strings.Contains(msg, "address already in use") && !strings.Contains(msg, "port is already allocated") {
			break
		}
		t.Logf("subnet %s.0/24 or a host port is taken, trying others: %v", p.Subnet, lastLines(msg, 2))
	}
	t.Fatalf("docker-compose up: %v", lastErr)
	return nil
}

func newProject(t testing.TB, root, img string) *project {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	octet, err := rand.Int(rand.Reader, big.NewInt(250))
	if err != nil {
		t.Fatal(err)
	}
	web, inter, ucs := freePort(t), freePort(t), freePort(t)
	p := &project{
		t:              t,
		root:           root,
		name:           "hachat-e2e-" + hex.EncodeToString(b[:]),
		Subnet:         "10.213." + strconv.FormatInt(octet.Int64()+1, 10),
		WebAPI:         fmt.Sprintf("http://127.0.0.1:%d", web),
		Interaction:    fmt.Sprintf("http://127.0.0.1:%d", inter),
		UCS:            fmt.Sprintf("https://127.0.0.1:%d", ucs),
		CertDir:        t.TempDir(),
		ServiceToken:   "docker-service-token",
		AdminToken:     "docker-admin-token",
		UCSReaderToken: "docker-ucs-reader-token",
		Service:        "customer-support",
	}
	p.env = append(os.Environ(),
		"HACHAT_IMAGE="+img,
		"HACHAT_SUBNET="+p.Subnet,
		"HACHAT_WEBAPI_PORT="+strconv.Itoa(web),
		"HACHAT_INTERACTION_PORT="+strconv.Itoa(inter),
		"HACHAT_UCS_PORT="+strconv.Itoa(ucs),
		"HACHAT_SERVICE_TOKEN="+p.ServiceToken,
		"HACHAT_ADMIN_TOKEN="+p.AdminToken,
		"HACHAT_UCS_READER_TOKEN="+p.UCSReaderToken,
		"HACHAT_SERVICE="+p.Service,
		"HACHAT_CERT_DIR="+p.CertDir,
		"COMPOSE_INTERACTIVE_NO_CLI=1",
	)
	return p
}

// compose runs docker-compose with the project's name, file and env.
func (p *project) compose(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--ansi", "never", "-p", p.name, "-f", filepath.Join(p.root, "deploy", "compose.yaml")}, args...)
	cmd := exec.CommandContext(ctx, "docker-compose", full...)
	cmd.Dir = p.root
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("docker-compose %s: %w\n%s", strings.Join(args, " "), err, lastLines(out.String(), 20))
	}
	return out.String(), nil
}

func (p *project) up() error {
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	start := time.Now()
	if _, err := p.compose(ctx, "up", "-d", "--no-build"); err != nil {
		return err
	}
	p.t.Logf("project %s up in %v (subnet %s.0/24, webapi %s, interaction %s, ucs %s)",
		p.name, time.Since(start).Round(time.Millisecond), p.Subnet, p.WebAPI, p.Interaction, p.UCS)
	p.t.Cleanup(func() {
		if p.t.Failed() || os.Getenv("HACHAT_DOCKER_KEEP_LOGS") != "" {
			p.dumpLogs()
		}
		p.down()
	})
	return nil
}

// down removes the project's containers, network and volumes.
func (p *project) down() {
	ctx, cancel := context.WithTimeout(context.Background(), downTimeout)
	defer cancel()
	if _, err := p.compose(ctx, "down", "-v", "--timeout", "3"); err != nil {
		p.t.Errorf("clean up: %v", err)
	}
}

// dumpLogs logs the tail of every container's output and keeps the full
// logs in artifacts/docker-<project>.log. It runs when the test failed, or
// always with HACHAT_DOCKER_KEEP_LOGS set.
func (p *project) dumpLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if p.t.Failed() {
		out, err := p.compose(ctx, "logs", "--no-color", "--timestamps", "--tail=60")
		p.t.Logf("docker-compose logs --tail=60 (err %v):\n%s", err, out)
		// The mixed tail of twenty containers can miss what the cores
		// did at start: their role story, whole (claims, epochs, steps
		// down, warnings), is what a failure of the pair needs first.
		cores, err := p.compose(ctx, "logs", "--no-color", "--timestamps", "core-a", "core-b")
		p.t.Logf("the cores' role story (err %v):\n%s", err, roleStory(cores, 120))
	}
	full, err := p.compose(ctx, "logs", "--no-color", "--timestamps")
	if err == nil {
		path := filepath.Join(harness.ArtifactDir(p.t), "docker-"+p.name+".log")
		if os.WriteFile(path, []byte(full), 0o644) == nil {
			p.t.Logf("full logs: %s", path)
		}
	}
}

// container returns the container id of a service.
func (p *project) container(ctx context.Context, service string) (string, error) {
	out, err := p.compose(ctx, "ps", "-q", service)
	if err != nil {
		return "", err
	}
	id := strings.TrimSpace(out)
	if id == "" {
		return "", fmt.Errorf("service %s has no container", service)
	}
	return id, nil
}

// kill sends SIGKILL to a service's container, waits until Docker reports
// it stopped and returns when the engine saw its process exit.
func (p *project) kill(ctx context.Context, service string) (time.Time, error) {
	id, err := p.container(ctx, service)
	if err != nil {
		return time.Time{}, err
	}
	if out, err := exec.CommandContext(ctx, "docker", "kill", "-s", "KILL", id).CombinedOutput(); err != nil {
		return time.Time{}, fmt.Errorf("docker kill %s: %w\n%s", service, err, out)
	}
	var died time.Time
	err = harness.Poll(10*time.Second, func() error {
		out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Running}} {{.State.FinishedAt}}", id).CombinedOutput()
		if err != nil {
			return fmt.Errorf("docker inspect: %w: %s", err, out)
		}
		running, finished, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
		if running == "true" {
			return fmt.Errorf("%s still running", service)
		}
		died, err = time.Parse(time.RFC3339Nano, finished)
		return err
	})
	return died, err
}

// exited returns the services whose containers are not running, with their
// exit codes: a part that died at start (bad flag) shows up here.
func (p *project) exited(ctx context.Context) (map[string]string, error) {
	out, err := p.compose(ctx, "ps", "-a", "-q")
	if err != nil {
		return nil, err
	}
	dead := map[string]string{}
	for _, id := range strings.Fields(out) {
		b, err := exec.CommandContext(ctx, "docker", "inspect", "-f",
			`{{index .Config.Labels "com.docker.compose.service"}} {{.State.Running}} {{.State.ExitCode}}`, id).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("docker inspect: %w: %s", err, b)
		}
		f := strings.Fields(string(b))
		if len(f) == 3 && f[0] == "certs" && f[2] == "0" {
			continue // the one-shot certificate issuer, done
		}
		if len(f) == 3 && f[1] != "true" {
			dead[f[0]] = "exit " + f[2]
		}
	}
	return dead, nil
}

// coreStatus is one entry of `hachat ctl status --json`.
type coreStatus struct {
	Addr   string     `json:"addr"`
	Error  string     `json:"error"`
	Status *coreState `json:"status"`
}

// coreState is what a core says of itself: its name, role, epoch and
// connected backup.
type coreState struct {
	Name    string `json:"name"`
	Role    string `json:"role"`
	Epoch   uint64 `json:"epoch"`
	Backup  string `json:"backup"`
	Lag     uint64 `json:"replication_lag"`
	Live    uint64 `json:"live_sessions"`
	Members []any  `json:"members"`
	// Draining: the core serves nothing new (a switchover's drain, or a
	// promotion still merging what UCS holds).
	Draining bool `json:"draining"`
}

// cores runs `hachat ctl status` inside the ucs container (the image has no
// shell, but it has hachat, and the cores' gRPC ports are only reachable on
// the private network; ucs is the one part no test kills) and returns the
// status of core-a and core-b.
func (p *project) cores(ctx context.Context) ([]coreStatus, error) {
	id, err := p.container(ctx, "ucs")
	if err != nil {
		return nil, err
	}
	// As the operator: the ucs container mounts the cert dir.
	out, err := exec.CommandContext(ctx, "docker", "exec", id, "/hachat", "ctl", "status", "--json", "--timeout", "2s",
		"--core", p.Subnet+".11:7101,"+p.Subnet+".12:7111",
		"--tls-ca=/certs/ca.pem", "--tls-cert=/certs/operator.pem", "--tls-key=/certs/operator.key").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("hachat ctl status: %w: %s", err, ee.Stderr)
		}
		return nil, fmt.Errorf("hachat ctl status: %w", err)
	}
	var sts []coreStatus
	if err := json.Unmarshal(out, &sts); err != nil {
		return nil, fmt.Errorf("hachat ctl status: %w: %s", err, out)
	}
	return sts, nil
}

// checkFlags runs every service's command line through the image's binary
// with --help appended: an unknown flag (a part that changed its flags)
// fails here with the flag package's own message instead of as a container
// that exits at start.
func checkFlags(t testing.TB, root, bin string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	p := &project{t: t, root: root, name: "hachat-flags", env: append(os.Environ(), "HACHAT_SUBNET=10.213.0")}
	out, err := p.compose(ctx, "config")
	if err != nil {
		t.Fatal(err)
	}
	var f composeFile
	if err := yaml.Unmarshal([]byte(out), &f); err != nil {
		t.Fatalf("parse docker-compose config: %v", err)
	}
	for name, s := range f.Services {
		args := append(append([]string(nil), s.Command...), "--help")
		if b, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
			t.Errorf("service %s: hachat %s rejects its flags: %v\n%s", name, strings.Join(s.Command, " "), err, firstLines(string(b), 3))
		}
	}
	if t.Failed() {
		t.FailNow()
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}

// roleStoryLine matches the log lines of a core that tell its role story.
var roleStoryLine = regexp.MustCompile(`(?i)claim|epoch|primary|backup|step|promot|level=(WARN|ERROR)`)

// roleStory returns the lines of logs that roleStoryLine matches, at most
// the last max of them.
func roleStory(logs string, max int) string {
	var lines []string
	for _, l := range strings.Split(logs, "\n") {
		if roleStoryLine.MatchString(l) {
			lines = append(lines, l)
		}
	}
	if len(lines) > max {
		lines = append([]string{fmt.Sprintf("(%d earlier lines left out)", len(lines)-max)}, lines[len(lines)-max:]...)
	}
	return strings.Join(lines, "\n")
}
