package coord

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// FencingPrefix is the key prefix of the chat cores' epochs and leases.
const FencingPrefix = "/hachat/fencing/"

// Dial returns an etcd client of the coordination cluster at endpoints
// (comma-separated host:port or URLs; with tlsCfg, https). It does not wait
// for a connection: the client finds a live member on each call, so losing
// one member of three changes nothing. The caller closes it.
func Dial(endpoints string, tlsCfg *tls.Config) (*clientv3.Client, error) {
	var eps []string
	for ep := range strings.SplitSeq(endpoints, ",") {
		ep = strings.TrimSpace(ep)
		if ep == "" {
			continue
		}
		if !strings.Contains(ep, "://") {
			if tlsCfg != nil {
				ep = "https://" + ep
			} else {
				ep = "http://" + ep
			}
		}
		eps = append(eps, ep)
	}
	if len(eps) == 0 {
		return nil, fmt.Errorf("coord: no coordination endpoints in %q", endpoints)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		TLS:                  tlsCfg,
		DialTimeout:          2 * time.Second,
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("coord: etcd client: %w", err)
	}
	return cli, nil
}
