package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DrainPrefix is the etcd key prefix of the drained pairs: one key per
// drained pair, DrainPrefix + pair.
const DrainPrefix = "/hachat/pairs/draining/"

// DrainStore keeps the drain list where every control plane sees it, and
// where it outlives a control plane's restart.
type DrainStore interface {
	// SetDraining records that pair p is drained (on) or not.
	SetDraining(ctx context.Context, p string, on bool) error
	// Watch sends the whole drain list at once and after every change,
	// until ctx ends; then it closes the channel.
	Watch(ctx context.Context) <-chan map[string]bool
}

// EtcdDrains is the DrainStore of the coordination cluster (etcd).
type EtcdDrains struct {
	cli *clientv3.Client
	log *slog.Logger
}

// NewEtcdDrains returns the drain store on cli; log tells of a lost watch.
func NewEtcdDrains(cli *clientv3.Client, log *slog.Logger) *EtcdDrains {
	return &EtcdDrains{cli: cli, log: log}
}

// SetDraining puts or deletes the pair's key.
func (d *EtcdDrains) SetDraining(ctx context.Context, p string, on bool) error {
	var err error
	if on {
		_, err = d.cli.Put(ctx, DrainPrefix+p, time.Now().UTC().Format(time.RFC3339))
	} else {
		_, err = d.cli.Delete(ctx, DrainPrefix+p)
	}
	if err != nil {
		return fmt.Errorf("drain list at the coordination cluster: %w", err)
	}
	return nil
}

// list reads the drain list and the revision it was read at.
func (d *EtcdDrains) list(ctx context.Context) (map[string]bool, int64, error) {
	resp, err := d.cli.Get(ctx, DrainPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return nil, 0, err
	}
	out := map[string]bool{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), DrainPrefix)] = true
	}
	return out, resp.Header.Revision, nil
}

// Watch reads the list, then rereads it after every change under the
// prefix; a lost watch (etcd away, compaction) is retried after a pause.
func (d *EtcdDrains) Watch(ctx context.Context) <-chan map[string]bool {
	out := make(chan map[string]bool, 1)
	go func() {
		defer close(out)
		var last map[string]bool
		for ctx.Err() == nil {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			cur, rev, err := d.list(rctx)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn("cannot read the drain list at the coordination cluster; the last one holds", "err", err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
				}
				continue
			}
			if last == nil || !maps.Equal(cur, last) {
				select {
				case out <- cur:
				case <-ctx.Done():
					return
				}
				last = cur
			}
			wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
			wch := d.cli.Watch(wctx, DrainPrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))
			for resp := range wch {
				if resp.Err() != nil || len(resp.Events) > 0 {
					break // reread the list (and watch again)
				}
			}
			wcancel()
		}
	}()
	return out
}
