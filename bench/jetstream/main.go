// Command jetstream is the anchor of `hachat bench chat --anchor`: it embeds a
// 3-node NATS JetStream cluster on loopback (one process, three servers that
// talk over real TCP routes), creates a stream with 3 replicas on file
// storage (default sync), and has synchronous publishers send 64-byte
// messages over many subjects while one consumer receives them. It reports
// acknowledged messages/s, the publish-to-ack latency and the
// publish-to-delivery latency, as text or JSON (--json).
//
// It lives in its own Go module so that the hachat binary does not carry
// nats-server.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "jetstream anchor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out, errw io.Writer) error {
	var o Options
	var asJSON, verbose bool
	fs := flag.NewFlagSet("jetstream", flag.ContinueOnError)
	fs.SetOutput(errw)
	fs.IntVar(&o.Publishers, "publishers", 128, "concurrent synchronous publishers")
	fs.IntVar(&o.Subjects, "subjects", 10000, "subjects the messages are spread over")
	fs.IntVar(&o.Messages, "messages", 60000, "messages to publish in all")
	fs.IntVar(&o.MessageSize, "size", 64, "message size in bytes (at least 8: the send time)")
	fs.IntVar(&o.Replicas, "replicas", 3, "stream replicas (the cluster has 3 servers)")
	fs.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fs.BoolVar(&verbose, "verbose", false, "print progress on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if verbose {
		o.Progress = errw
	}
	rep, err := Run(ctx, o)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprint(out, rep.Text())
	return nil
}

// Text renders the report for a terminal.
func (r Report) Text() string {
	ms := func(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }
	return fmt.Sprintf(`jetstream anchor: %d servers, stream R%d file storage (default sync), %d publishers, %d subjects, %d-byte messages
messages            %d acknowledged, %d errors, in %v
throughput          %.0f acknowledged messages/s
publish-to-ack      p50 %s   p99 %s   max %s
publish-to-deliver  p50 %s   p99 %s   max %s (%d delivered)
`, r.Servers, r.Replicas, r.Publishers, r.Subjects, r.MessageSize,
		r.Acked, r.Errors, r.Elapsed.Round(time.Millisecond), r.PerSecond,
		ms(r.AckP50), ms(r.AckP99), ms(r.AckMax), ms(r.DeliverP50), ms(r.DeliverP99), ms(r.DeliverMax), r.Delivered)
}
