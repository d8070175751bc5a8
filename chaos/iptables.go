package chaos

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// ErrNoIPTables means the iptables command is missing: partitions cannot be
// made (make deps installs it).
var ErrNoIPTables = errors.New("iptables not found")

// Firewall makes partitions with iptables rules in a chain of its own,
// reached from INPUT for the loopback interface: every packet between two
// local processes crosses INPUT on lo once, so dropping there the packets
// to or from a part's ports cuts the part off in both directions. The chain
// is named after the chaos process (HACHAT-CHAOS-<pid>), so two runs never
// touch each other's rules; Close removes the chain and its jump.
type Firewall struct {
	Chain string
	run   func(ctx context.Context, args ...string) error

	mu        sync.Mutex
	installed bool
}

// ChainName returns the chain of the chaos process pid.
func ChainName(pid int) string { return fmt.Sprintf("HACHAT-CHAOS-%d", pid) }

// NewFirewall returns a firewall that runs the iptables binary.
func NewFirewall(chain string) (*Firewall, error) {
	bin, err := exec.LookPath("iptables")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoIPTables, err)
	}
	return &Firewall{Chain: chain, run: func(ctx context.Context, args ...string) error {
		out, err := exec.CommandContext(ctx, bin, append([]string{"-w"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}}, nil
}

// SetupRules are the iptables arguments that create the chain and the jump.
func SetupRules(chain string) [][]string {
	return [][]string{{"-N", chain}, {"-I", "INPUT", "1", "-i", "lo", "-j", chain}}
}

// TeardownRules are the iptables arguments that remove the jump and the chain.
func TeardownRules(chain string) [][]string {
	return [][]string{{"-D", "INPUT", "-i", "lo", "-j", chain}, {"-F", chain}, {"-X", chain}}
}

// PartitionRules are the iptables arguments that drop every TCP and UDP
// packet to or from each of ports.
func PartitionRules(chain string, ports []int) [][]string {
	var out [][]string
	for _, p := range ports {
		ps := strconv.Itoa(p)
		for _, proto := range []string{"tcp", "udp"} {
			out = append(out,
				[]string{"-A", chain, "-p", proto, "--dport", ps, "-j", "DROP"},
				[]string{"-A", chain, "-p", proto, "--sport", ps, "-j", "DROP"})
		}
	}
	return out
}

// Setup creates the chain and its jump.
func (f *Firewall) Setup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range SetupRules(f.Chain) {
		if err := f.run(ctx, r...); err != nil {
			f.teardown(context.WithoutCancel(ctx))
			return err
		}
	}
	f.installed = true
	return nil
}

// Cut drops every packet to and from ports.
func (f *Firewall) Cut(ctx context.Context, ports []int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range PartitionRules(f.Chain, ports) {
		if err := f.run(ctx, r...); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every partition rule (the chain stays, empty).
func (f *Firewall) Heal(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.run(ctx, "-F", f.Chain)
}

// Close removes the jump and the chain; it is safe to call more than once.
func (f *Firewall) Close(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.installed {
		return nil
	}
	f.installed = false
	return f.teardown(ctx)
}

func (f *Firewall) teardown(ctx context.Context) error {
	var errs []error
	for _, r := range TeardownRules(f.Chain) {
		if err := f.run(ctx, r...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ProcessPorts returns the local ports of every TCP and UDP socket that
// process pid holds (listening and connected), read from /proc: with the
// ports of the state file, a partition then also cuts the connections the
// part opened itself. Connections it opens during the partition, from new
// ephemeral ports, are not cut.
func ProcessPorts(pid int) ([]int, error) {
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, fmt.Errorf("sockets of pid %d: %w", pid, err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	seen := map[int]bool{}
	for _, tbl := range []string{"tcp", "tcp6", "udp", "udp6"} {
		fh, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, tbl))
		if err != nil {
			continue
		}
		for _, p := range socketPorts(fh, inodes) {
			seen[p] = true
		}
		fh.Close()
	}
	out := make([]int, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Ints(out)
	return out, nil
}

// socketPorts parses a /proc/net/{tcp,udp} table and returns the local
// ports of the sockets whose inode is in inodes.
func socketPorts(r interface{ Read([]byte) (int, error) }, inodes map[string]bool) []int {
	var out []int
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 || !inodes[f[9]] {
			continue
		}
		i := strings.LastIndexByte(f[1], ':')
		if i < 0 {
			continue
		}
		p, err := strconv.ParseUint(f[1][i+1:], 16, 16)
		if err == nil && p > 0 {
			out = append(out, int(p))
		}
	}
	return out
}
