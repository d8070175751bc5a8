//go:build docker

package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/hachat/hachat/chatcore/chatpb"
	"github.com/hachat/hachat/mtls"
	"github.com/hachat/hachat/pairs"
	"github.com/hachat/hachat/xds"
)

// pairCores are the cores of deploy/compose.yaml by pair: primary, backup,
// and each one's /status address after the subnet's three octets.
var pairCores = []struct {
	pair, primary, backup string
	http                  map[string]string
}{
	{"1", "core-a", "core-b", map[string]string{"core-a": ".11:7102", "core-b": ".12:7112"}},
	{"2", "core-2a", "core-2b", map[string]string{"core-2a": ".13:7102", "core-2b": ".14:7112"}},
	{"3", "core-3a", "core-3b", map[string]string{"core-3a": ".15:7102", "core-3b": ".16:7112"}},
}

// proxylessNode is the xDS node id of the test's proxyless client.
const proxylessNode = "docker-pairs-e2e"

// pairsChat is one chat of TestPairContainersKilled and what was
// acknowledged in it.
type pairsChat struct {
	auth  *chatpb.Auth
	mu    sync.Mutex
	acked []string // client message ids, in order
}

func (c *pairsChat) pair() string { return pairs.Of(c.auth.GetSessionId()) }

// TestPairContainersKilled (issue 10, point 6): deploy/compose.yaml runs
// three pairs (core-a/core-b, core-2a/core-2b, core-3a/core-3b). A
// proxyless grpc-go client on the host, driven only by xDS from the
// compose control planes (its bootstrap names them; mTLS with the
// operator's certificate), starts chats that the control plane places over
// all three pairs and sends in each through its pair's route
// (x-hachat-pair). Both containers of pair 2 are killed with SIGKILL at
// once, while pairs 1 and 3 keep chatting: every one of their sends is
// acknowledged at the first attempt, before and after the kill, and none
// of their chats sees a failover notice. The control planes mark pair 2
// degraded (weight 0), and every new chat is placed on pair 1 or 3 and
// starts at the first attempt.
//
// "Unaffected" is: no failover in pairs 1 and 3 (the same primaries at the
// same epochs before the kill and at the end, no disconnected/reconnected
// notice in their chats), every message acknowledged exactly once and
// none misrouted (NotFound: a call that reached another pair). A send
// answered UNAVAILABLE is resent with the same client message id, as any
// client does, and counted: on this loaded machine gossip may suspect a
// live primary for a moment (seen: core-a suspected for 1 s at load 15,
// its backup published at priority 0 and answering "not primary"), which
// has nothing to do with pair 2.
func TestPairContainersKilled(t *testing.T) {
	requireDocker(t)
	root := repoRoot(t)
	img := image(t, root)
	testStart := time.Now()
	p := startProject(t, root, img)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// 1. Ready: every pair formed, both control planes see three serving
	// pairs.
	waitFor(t, ctx, "three pairs formed", 60*time.Second, func() error {
		if dead, err := p.exited(ctx); err == nil && len(dead) > 0 {
			return fmt.Errorf("%w: containers exited: %v", errFatal, dead)
		}
		for _, pc := range pairCores {
			if err := pairStatus(ctx, p, pc.pair, pc.primary, pc.backup, pc.http); err != nil {
				return err
			}
		}
		return nil
	})
	xdsHTTP := operatorHTTP(t, p)
	waitFor(t, ctx, "both control planes serving three pairs", 30*time.Second, func() error {
		for _, cp := range []string{".20", ".21"} {
			st, err := controlPlanePairs(ctx, xdsHTTP, p.Subnet+cp)
			if err != nil {
				return err
			}
			if n := countPairs(st, xds.PairServing); n != 3 {
				return fmt.Errorf("%s: %d serving pairs: %+v", cp, n, st.Pairs)
			}
		}
		return nil
	})
	t.Logf("three pairs formed %v after the test started", time.Since(testStart).Round(time.Millisecond))

	// 2. Chats placed by the control plane over all three pairs.
	chat := proxylessCompose(t, p)
	var chats []*pairsChat
	waitFor(t, ctx, "the proxyless client to start a chat", 30*time.Second, func() error {
		c, err := startPlaced(ctx, chat, "first")
		if err != nil {
			return err
		}
		chats = append(chats, c)
		return nil
	})
	for i := range 29 {
		c, err := startPlaced(ctx, chat, fmt.Sprintf("c%d", i))
		if err != nil {
			t.Fatalf("start chat %d: %v", i, err)
		}
		chats = append(chats, c)
	}
	perPair := map[string]int{}
	for _, c := range chats {
		perPair[c.pair()]++
	}
	t.Logf("30 chats placed: %v", perPair)
	if perPair["1"] == 0 || perPair["2"] == 0 || perPair["3"] == 0 || len(perPair) != 3 {
		t.Fatalf("placement %v: want chats on pairs 1, 2 and 3", perPair)
	}
	// A first message in every chat, pair 2's included: every route works.
	for _, c := range chats {
		if err := sendOnce(ctx, chat, c, "before"); err != nil {
			t.Fatalf("send in %s (pair %s) before the kill: %v", c.auth.GetSessionId(), c.pair(), err)
		}
	}

	// 3. Pairs 1 and 3 keep chatting (a message per chat every 200 ms)
	// while both cores of pair 2 are killed.
	var others []*pairsChat
	for _, c := range chats {
		if c.pair() != "2" {
			others = append(others, c)
		}
	}
	// The containers to kill and the survivors' primaries, looked up
	// before the chatter starts (docker-compose is slow on a loaded
	// machine).
	pair2, err := p.containers(ctx, "core-2a", "core-2b")
	if err != nil {
		t.Fatal(err)
	}
	primaries, err := survivorPrimaries(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	chatter := startChatter(ctx, chat, others, 200*time.Millisecond)
	defer chatter.stop()
	waitFor(t, ctx, "pairs 1 and 3 chatting", 30*time.Second, func() error {
		if n := chatter.acked(); n < 2*len(others) {
			return fmt.Errorf("%d acknowledged", n)
		}
		return nil
	})
	ackedAtKill := chatter.acked()
	killed, err := killContainers(ctx, pair2)
	if err != nil {
		t.Fatal(err)
	}
	ackedAtKill = chatter.ackedBefore(killed, ackedAtKill)
	t.Logf("killed core-2a and core-2b (pair 2, %d chats) after %d acknowledged messages in pairs 1 and 3 (docker kill returned %v after the containers died)",
		perPair["2"], ackedAtKill, time.Since(killed).Round(time.Millisecond))

	// 4. The control planes mark pair 2 degraded; the client applies it.
	waitFor(t, ctx, "pair 2 degraded at both control planes", 30*time.Second, func() error {
		for _, cp := range []string{".20", ".21"} {
			st, err := controlPlanePairs(ctx, xdsHTTP, p.Subnet+cp)
			if err != nil {
				return err
			}
			for _, pi := range st.Pairs {
				if pi.Name == "2" && (pi.State != xds.PairDegraded || pi.Weight != 0) {
					return fmt.Errorf("%s: pair 2 %s at weight %d", cp, pi.State, pi.Weight)
				}
				if pi.Name != "2" && (pi.State != xds.PairServing || pi.Weight == 0) {
					return fmt.Errorf("%w: %s: pair %s %s at weight %d after pair 2's death", errFatal, cp, pi.Name, pi.State, pi.Weight)
				}
			}
		}
		return nil
	})
	degraded := time.Since(killed)
	waitFor(t, ctx, "the proxyless client in sync", 30*time.Second, func() error {
		for _, cp := range []string{".20", ".21"} {
			var st xds.Status
			if err := getJSON(ctx, xdsHTTP, "https://"+p.Subnet+cp+":7201"+xds.StatusPath, &st); err != nil {
				continue
			}
			for _, n := range st.Nodes {
				if n.ID == proxylessNode && n.InSync {
					return nil
				}
			}
		}
		return errors.New("node not in sync")
	})
	t.Logf("pair 2 degraded at both control planes %v after the kill", degraded.Round(time.Millisecond))

	// 5. New chats avoid pair 2: each starts at the first attempt, on pair
	// 1 or 3 (a route still weighting pair 2 would send some there, where
	// nothing answers).
	newPerPair := map[string]int{}
	for i := range 20 {
		c, err := startPlaced(ctx, chat, fmt.Sprintf("after%d", i))
		if err != nil {
			t.Errorf("new chat %d after pair 2's death: %v", i, err)
			continue
		}
		newPerPair[c.pair()]++
	}
	t.Logf("20 chats placed after pair 2's death: %v", newPerPair)
	if newPerPair["2"] != 0 {
		t.Errorf("%d new chats placed on the dead pair 2", newPerPair["2"])
	}

	// 6. Pairs 1 and 3 went on: messages acknowledged after the kill, no
	// send failed, nothing lost, no failover notice.
	waitFor(t, ctx, "pairs 1 and 3 chatting 3 s after the kill", 30*time.Second, func() error {
		if n := chatter.acked(); n < ackedAtKill+2*len(others) || time.Since(killed) < 3*time.Second {
			return fmt.Errorf("%d acknowledged, %d at the kill", n, ackedAtKill)
		}
		return nil
	})
	failed := chatter.stop()
	retried, lastRetry := chatter.retries()
	t.Logf("pairs 1 and 3: %d messages acknowledged, %d of them after the kill; %d sends resent after UNAVAILABLE (last: %v)",
		chatter.acked(), chatter.acked()-ackedAtKill, retried, lastRetry)
	for _, err := range failed {
		t.Errorf("pairs 1 and 3 must not notice pair 2's death: %v", err)
	}
	after, err := survivorPrimaries(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(after, primaries) {
		t.Errorf("pairs 1 and 3 failed over: primaries %v before the kill, %v at the end", primaries, after)
	}
	for _, c := range others {
		evs, err := chatEvents(ctx, chat, c)
		if err != nil {
			t.Errorf("events of %s (pair %s): %v", c.auth.GetSessionId(), c.pair(), err)
			continue
		}
		have := map[string]int{}
		for _, e := range evs {
			switch e.GetKind() {
			case chatpb.EventKind_EVENT_KIND_MESSAGE:
				have[e.GetClientMessageId()]++
			case chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED, chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:
				t.Errorf("chat %s (pair %s) saw a failover notice: %v", c.auth.GetSessionId(), c.pair(), e.GetKind())
			}
		}
		for _, id := range c.acked {
			if have[id] != 1 {
				t.Errorf("chat %s (pair %s): acknowledged message %s appears %d times", c.auth.GetSessionId(), c.pair(), id, have[id])
			}
		}
	}
	t.Logf("test took %v", time.Since(testStart).Round(time.Millisecond))
}

// repoRoot is the module root, where deploy/compose.yaml is.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// pairStatus reports nil when primary serves pair as primary with backup
// connected, both naming the pair in /status.
func pairStatus(ctx context.Context, p *project, pair, primary, backup string, addrs map[string]string) error {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for name, addr := range addrs {
		var st struct {
			Pair, Name, Role, Backup string
		}
		if err := getJSON(ctx, client, "http://"+p.Subnet+addr+"/status", &st); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if st.Pair != pair || st.Name != name {
			return fmt.Errorf("%w: %s says it is %s of pair %q, want pair %s", errFatal, addr, st.Name, st.Pair, pair)
		}
		switch {
		case name == primary && (st.Role != "primary" || st.Backup != backup):
			return fmt.Errorf("%s is %s with backup %q", name, st.Role, st.Backup)
		case name == backup && st.Role != "backup":
			return fmt.Errorf("%s is %s", name, st.Role)
		}
	}
	return nil
}

// operatorHTTP returns an mTLS client with the operator's certificate of
// the project, for the control planes' HTTP API.
func operatorHTTP(t *testing.T, p *project) *http.Client {
	t.Helper()
	src, err := mtls.Load(mtls.FilesIn(p.CertDir, "operator"))
	if err != nil {
		t.Fatalf("operator certificate of the compose cluster: %v", err)
	}
	return src.HTTPClient(mtls.Allow(mtls.KindXDS), 5*time.Second)
}

// controlPlanePairs is GET /xds/v1/pairs of the control plane at ip.
func controlPlanePairs(ctx context.Context, client *http.Client, ip string) (xds.PairsStatus, error) {
	var st xds.PairsStatus
	err := getJSON(ctx, client, "https://"+ip+":7201"+xds.PairsPath, &st)
	return st, err
}

func countPairs(st xds.PairsStatus, state string) int {
	n := 0
	for _, pi := range st.Pairs {
		if pi.State == state && pi.Weight > 0 {
			n++
		}
	}
	return n
}

// getJSON decodes the answer of GET url into v.
func getJSON(ctx context.Context, client *http.Client, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	return nil
}

// proxylessCompose returns a Chat client of xds:///chatcore whose only
// configuration is a grpc-go bootstrap naming the project's two control
// planes, with the operator's certificate: mTLS to the control planes
// ("tls" channel credentials, which check their address SANs) and, through
// grpc-go's xDS credentials, to the cores as the published clusters say.
func proxylessCompose(t *testing.T, p *project) chatpb.ChatClient {
	t.Helper()
	boot, err := xds.GRPCBootstrap(xds.BootstrapOptions{XDS: p.Subnet + ".20:7200", Fallback: []string{p.Subnet + ".21:7200"},
		NodeID: proxylessNode, TLS: mtls.FilesIn(p.CertDir, "operator")})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(boot)
	if err != nil {
		t.Fatal(err)
	}
	// The fallback applies only to a cluster without TLS settings; the
	// compose cores refuse plaintext.
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///"+xds.APIListenerName, grpc.WithResolvers(rb), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return chatpb.NewChatClient(conn)
}

// startPlaced starts one chat with no pair named (the control plane's
// placement route chooses), in one attempt.
func startPlaced(ctx context.Context, chat chatpb.ChatClient, tag string) (*pairsChat, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := chat.StartSession(cctx, &chatpb.StartSessionRequest{Service: "customer-support", Nickname: "c-" + tag,
		ClientRequestId: fmt.Sprintf("docker-pairs-%s-%d", tag, time.Now().UnixNano())})
	if err != nil {
		return nil, err
	}
	return &pairsChat{auth: resp.GetAuth()}, nil
}

// sendOnce sends one message in c through its pair's route, in one
// attempt, and records it when acknowledged.
func sendOnce(ctx context.Context, chat chatpb.ChatClient, c *pairsChat, id string) error {
	id = id + "-" + c.auth.GetSessionId()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cctx = metadata.AppendToOutgoingContext(cctx, pairs.Header, c.pair())
	if _, err := chat.Send(cctx, &chatpb.SendRequest{Auth: c.auth, Kind: chatpb.EventKind_EVENT_KIND_MESSAGE,
		Text: "hello " + id, ClientMessageId: id}); err != nil {
		return err
	}
	c.mu.Lock()
	c.acked = append(c.acked, id)
	c.mu.Unlock()
	return nil
}

// chatEvents reads c's whole log through its pair's route.
func chatEvents(ctx context.Context, chat chatpb.ChatClient, c *pairsChat) ([]*chatpb.Event, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cctx = metadata.AppendToOutgoingContext(cctx, pairs.Header, c.pair())
	resp, err := chat.Events(cctx, &chatpb.EventsRequest{Auth: c.auth, FromIndex: 1})
	if err != nil {
		return nil, err
	}
	return resp.GetEvents(), nil
}

// chatter sends a message in each of its chats every interval, one
// goroutine per chat; a send answered UNAVAILABLE is resent with the same
// client message id for up to 30 s. It owns those goroutines until stop.
type chatter struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	at     []time.Time // when each send was acknowledged
	errs   []error
	resent int
	last   error // the last UNAVAILABLE answer
	once   sync.Once
}

func startChatter(ctx context.Context, chat chatpb.ChatClient, chats []*pairsChat, interval time.Duration) *chatter {
	ctx, cancel := context.WithCancel(ctx)
	ch := &chatter{cancel: cancel}
	for _, c := range chats {
		ch.wg.Add(1)
		go func() {
			defer ch.wg.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				id := fmt.Sprintf("m%d", i)
				deadline := time.Now().Add(30 * time.Second)
				for {
					err := sendOnce(ctx, chat, c, id)
					if ctx.Err() != nil {
						return // stopped mid-send: not the cluster's failure
					}
					ch.mu.Lock()
					switch {
					case err == nil:
						ch.at = append(ch.at, time.Now())
					case status.Code(err) == codes.Unavailable && time.Now().Before(deadline):
						ch.resent++
						ch.last = fmt.Errorf("%s at %s: %w", c.auth.GetSessionId(), time.Now().Format("15:04:05.000"), err)
					default:
						ch.errs = append(ch.errs, fmt.Errorf("send %s in %s (pair %s) at %s: %w", id, c.auth.GetSessionId(), c.pair(), time.Now().Format("15:04:05.000"), err))
					}
					ch.mu.Unlock()
					if err == nil || status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	return ch
}

// acked is how many sends were acknowledged so far.
func (ch *chatter) acked() int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return len(ch.at)
}

// ackedBefore is how many sends were acknowledged before t, at least min.
func (ch *chatter) ackedBefore(t time.Time, least int) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	n := 0
	for _, at := range ch.at {
		if at.Before(t) {
			n++
		}
	}
	return max(n, least)
}

// retries is how many sends were resent after UNAVAILABLE, and the last
// such answer.
func (ch *chatter) retries() (int, error) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return ch.resent, ch.last
}

// stop ends the sends, waits for the goroutines and returns the sends that
// failed (at most 10).
func (ch *chatter) stop() []error {
	ch.once.Do(func() {
		ch.cancel()
		ch.wg.Wait()
	})
	ch.mu.Lock()
	defer ch.mu.Unlock()
	return slices.Clone(ch.errs[:min(len(ch.errs), 10)])
}

// survivorPrimaries returns the primary of pairs 1 and 3 with its epoch
// ("core-a@2"), from their /status.
func survivorPrimaries(ctx context.Context, p *project) (map[string]string, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	out := map[string]string{}
	for _, pc := range pairCores {
		if pc.pair == "2" {
			continue
		}
		for name, addr := range pc.http {
			var st struct{ Name, Role, Epoch string }
			if err := getJSON(ctx, client, "http://"+p.Subnet+addr+"/status", &st); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if st.Role == "primary" {
				out[pc.pair] += st.Name + "@" + st.Epoch
			}
		}
	}
	return out, nil
}

// containers returns the container ids of services.
func (p *project) containers(ctx context.Context, services ...string) ([]string, error) {
	ids := make([]string, 0, len(services))
	for _, s := range services {
		id, err := p.container(ctx, s)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// killContainers sends SIGKILL to the containers ids in one docker kill,
// waits until Docker reports every one stopped and returns when the first
// of them died (the engine's exit time).
func killContainers(ctx context.Context, ids []string) (time.Time, error) {
	if out, err := exec.CommandContext(ctx, "docker", append([]string{"kill", "-s", "KILL"}, ids...)...).CombinedOutput(); err != nil {
		return time.Time{}, fmt.Errorf("docker kill: %w\n%s", err, out)
	}
	var died time.Time
	err := until(ctx, "the killed containers stopped", 10*time.Second, func() error {
		out, err := exec.CommandContext(ctx, "docker", append([]string{"inspect", "-f", "{{.State.Running}} {{.State.FinishedAt}}"}, ids...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("docker inspect: %w: %s", err, out)
		}
		died = time.Time{}
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			running, finished, _ := strings.Cut(line, " ")
			if running != "false" {
				return fmt.Errorf("still running: %s", out)
			}
			at, err := time.Parse(time.RFC3339Nano, finished)
			if err != nil {
				return err
			}
			if died.IsZero() || at.Before(died) {
				died = at
			}
		}
		return nil
	})
	return died, err
}
