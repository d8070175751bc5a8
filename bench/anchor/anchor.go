// Package anchor runs the JetStream anchor (the program in bench/jetstream,
// its own Go module so that hachat does not carry nats-server) and compares
// hachat's chat bench with it in one run: alternating rounds, medians, and
// the ratios the targets are stated in.
package anchor

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// Report is the anchor program's --json report. Durations are nanoseconds
// in JSON.
type Report struct {
	Servers     int           `json:"servers"`
	Replicas    int           `json:"replicas"`
	Publishers  int           `json:"publishers"`
	Subjects    int           `json:"subjects"`
	MessageSize int           `json:"message_size"`
	Acked       int           `json:"acked"`
	Errors      int           `json:"errors"`
	Delivered   int           `json:"delivered"`
	Elapsed     time.Duration `json:"elapsed_ns"`
	PerSecond   float64       `json:"messages_per_second"`
	AckP50      time.Duration `json:"ack_p50_ns"`
	AckP99      time.Duration `json:"ack_p99_ns"`
	AckMax      time.Duration `json:"ack_max_ns"`
	DeliverP50  time.Duration `json:"deliver_p50_ns"`
	DeliverP99  time.Duration `json:"deliver_p99_ns"`
	DeliverMax  time.Duration `json:"deliver_max_ns"`
}

// Options shape one anchor run: the same load as the chat bench's.
type Options struct {
	// Publishers is the number of synchronous publishers (the chat bench's concurrency).
	Publishers int
	// Subjects is the number of subjects (the chat bench's sessions).
	Subjects int
	// Messages is the number of messages published in all.
	Messages int
	// MessageSize is the payload size in bytes (default 64).
	MessageSize int
}

// Program is a runnable anchor binary.
type Program struct {
	// Path is the binary.
	Path string
}

// Prepare returns the anchor program at path: a directory is the anchor's
// module, built once into workDir with the go command; anything else is
// taken as a prebuilt binary.
func Prepare(ctx context.Context, path, workDir string) (Program, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Program{}, fmt.Errorf("anchor %s: %w", path, err)
	}
	if !st.IsDir() {
		return Program{Path: path}, nil
	}
	bin := filepath.Join(workDir, "jetstream-anchor")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Dir = path
	if out, err := cmd.CombinedOutput(); err != nil {
		return Program{}, fmt.Errorf("build anchor in %s: %w\n%s", path, err, out)
	}
	return Program{Path: bin}, nil
}

// Run runs the anchor once and decodes its report.
func (p Program) Run(ctx context.Context, o Options) (Report, error) {
	if o.MessageSize <= 0 {
		o.MessageSize = 64
	}
	args := []string{"--json",
		"--publishers=" + strconv.Itoa(o.Publishers),
		"--subjects=" + strconv.Itoa(o.Subjects),
		"--messages=" + strconv.Itoa(o.Messages),
		"--size=" + strconv.Itoa(o.MessageSize),
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, p.Path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Report{}, fmt.Errorf("anchor %s: %w: %s", p.Path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return Report{}, fmt.Errorf("anchor report: %w", err)
	}
	return rep, nil
}
