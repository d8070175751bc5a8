package interaction

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// EtcdPrefix is the default key prefix of the interaction instances' state
// in the coordination cluster.
const EtcdPrefix = "/hachat/interaction/"

// EtcdStore is the StateStore of a coordination cluster (etcd): the leader
// is elected with an etcd election whose key lives on the instance's lease
// (lease seconds: kill -9 of the leader frees the election after at most
// that long), and the snapshot is saved in a transaction that compares the
// election key's create revision, so only the current term can write.
type EtcdStore struct {
	cli    *clientv3.Client
	prefix string
	lease  time.Duration
}

// NewEtcdStore returns a store under prefix (EtcdPrefix when empty) whose
// leader holds a lease of the given length (rounded up to seconds, at
// least 1 s).
func NewEtcdStore(cli *clientv3.Client, prefix string, lease time.Duration) *EtcdStore {
	if prefix == "" {
		prefix = EtcdPrefix
	}
	return &EtcdStore{cli: cli, prefix: prefix, lease: lease}
}

func (e *EtcdStore) electionKey() string { return e.prefix + "leader" }
func (e *EtcdStore) stateKey() string    { return e.prefix + "state" }

// Campaign implements StateStore.
func (e *EtcdStore) Campaign(ctx context.Context, addr string) (Term, error) {
	ttl := max(int((e.lease+time.Second-1)/time.Second), 1)
	sess, err := concurrency.NewSession(e.cli, concurrency.WithTTL(ttl), concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return nil, fmt.Errorf("campaign: lease: %w", err)
	}
	el := concurrency.NewElection(sess, e.electionKey())
	if err := el.Campaign(ctx, addr); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("campaign: %w", err)
	}
	return &etcdTerm{st: e, sess: sess, el: el}, nil
}

// Leader implements StateStore: the value of the oldest election key.
func (e *EtcdStore) Leader(ctx context.Context) (string, error) {
	resp, err := e.cli.Get(ctx, e.electionKey()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", fmt.Errorf("leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Load implements StateStore.
func (e *EtcdStore) Load(ctx context.Context) ([]byte, error) {
	resp, err := e.cli.Get(ctx, e.stateKey())
	if err != nil {
		return nil, fmt.Errorf("load state: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

type etcdTerm struct {
	st   *EtcdStore
	sess *concurrency.Session
	el   *concurrency.Election
}

// Save implements Term: a put guarded by the election key's create
// revision, which only this term's key has.
func (t *etcdTerm) Save(ctx context.Context, snap []byte) error {
	resp, err := t.st.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(t.el.Key()), "=", t.el.Rev())).
		Then(clientv3.OpPut(t.st.stateKey(), string(snap))).
		Commit()
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if !resp.Succeeded {
		return ErrNotLeader
	}
	return nil
}

func (t *etcdTerm) Done() <-chan struct{} { return t.sess.Done() }

func (t *etcdTerm) Resign(ctx context.Context) error {
	err := t.el.Resign(ctx)
	if cerr := t.sess.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("resign: %w", err)
	}
	return nil
}
