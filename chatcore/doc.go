// Package chatcore is the heart of hachat: it holds live chat sessions, each
// an ordered event log with a gap-free index, applies the Genesys transcript
// policy (transcript-auto-save, transcript-resend-attempts, ...), and serves
// the chatpb.Chat gRPC API plus grpc.health.v1, /metrics, /healthz and
// /status.
//
// One customer message travels through one function, (*Core).append:
//
//	validate under the session lock -> assign the next index
//	-> second copy (replication to the backup, or UCS while the backup is away)
//	-> commit (fold into the session state, append to the log)
//	-> fan-out to subscribers (bounded buffers, never blocking)
//	-> enqueue the transcript save (asynchronous, behind a circuit breaker).
//
// Session state is a fold of the log (package sessionlog), so a backup or a
// restored session rebuilds exactly the same state from the same events.
//
// # Parts
//
//   - sessionlog (package): the session log and its fold; pure, no locks.
//   - role (package): the role state machine (primary/backup, epochs,
//     draining, unmerged); fencing.go is the core's side of it (claim,
//     becomePrimary, stepDown) and failover.go decides when (roleLoop,
//     lead, promote, handover).
//   - detect (package): the backup's failure detection (probe, peer
//     Status, witness, gossip evidence, the cut-off test, the lease's
//     certainty) behind detect.Net and detect.Members; follower.go runs the
//     backup's stream and asks it (Decide, then Recheck before the claim).
//   - replica (package): both sides of replication. Replicator (primary:
//     the batched stream with cumulative acks) reaches the core through
//     replica.Core and replica.Session (replication.go: replicaSource);
//     Applier (backup) through replica.Table and replica.Entry
//     (applier.go: replicaTable).
//   - Fencer (fencer.go, etcdfencer.go): where epochs and the primary's
//     lease live (etcd, or UCS through StoreFencer); guard (guard.go)
//     renews the primary's lease and checks the newer epochs peers claim.
//   - second copy in UCS (solo.go: ucsCopy saves an event while the backup
//     is away, after soloMark recorded the solo mark).
//   - restorer (restore.go): restoration after a promotion or switchover,
//     and rebuilding a session from UCS on its first call (lookup); it
//     reaches the core only through restorerCore (restorerHost), UCS
//     through restoreStore and the saver through saveQueue.
//   - adoptions (adopt.go): N+1, adopting another pair that lost both
//     cores, through adopterCore.
//   - peers (membership.go): where the other core and the witness are, and
//     the one connection to the other core.
//   - janitor (janitor.go, due.go): idle customers, events in doubt,
//     given-up saves, forgetting ended sessions; it looks only at the
//     sessions due (a deadline heap), not at every session each tick.
//   - saver (package): transcript saves (queue, workers, batched saves,
//     breaker, resends) behind saver.Store, the part of TranscriptStore
//     (store.go; records in package transcript) it uses; it reaches the
//     core through saver.Core and a session through saver.Session
//     (saving.go: saverHost), and owns each session's saver.State.
//   - RPC surface (rpc.go: the Chat handlers, each validating, authenticating
//     and calling one operation of ops.go; its error table maps refusals to
//     gRPC codes; server.go: gRPC, HTTP, gates).
//
// docs/chatcore.md has the map with what each part owns.
//
// # Lock order
//
// This is the one place the lock order is written down. A goroutine that
// holds several of these locks took them in this order (outer first):
//
//	Core.inflight (RW; appends shared, a switchover's drain exclusive)
//	  -> session.appendMu (one appender per session across its second copy)
//	    -> soloMark.mu (solo.go: recording the solo mark at the fencing authority)
//	      -> role.State's lock (transitions; their effects take the locks
//	         of health, background, the replicator and its link, all leaves here)
//	    -> session.mu (the log, subscribers, save bookkeeping; held briefly)
//	      -> Core.mu (the sessions map and the live count)
//
// The types say it where they can. A method whose name ends in Locked
// wants session.mu held (commitLocked, snapshotLocked, and the
// replica.Entry's MergeProgressLocked and replica.Table's CommitLocked,
// which the applier calls between Entry.Lock and Entry.Unlock: session.mu
// before Core.mu). replica.Link.Hold and Replicator.SendToBackup want the
// session's appendMu held and take only package replica's locks, which are
// leaves (Replicator.mu and Link.mu are never held together; progressMu
// alone). The detector (package detect) holds atomics, no lock.
//
// Everything else is a leaf, never held while taking another of ours: the
// saver's queue (saver.Saver's mu), its trouble counter, package replica's locks
// (above), watchers, tombstones, background, restorer.mu (the sessions
// being rebuilt from UCS; restorerCore's doc says which locks each of its
// methods takes, none while restorer.mu is held), peers.mu (the connection to the other core),
// metaMu, guard.mu (refuted epochs), adoptions.mu (the adopted pairs),
// Core.due's lock (janitor.go's deadline heap: commitLocked and
// holdInDoubt schedule a session under its session.mu). The
// role State's hot readers (IsPrimary, Epoch, Draining, Unmerged) are
// atomics and take no lock, so the append path never waits for a
// transition. Held across network calls: inflight and appendMu across a
// second copy (inflight exclusively across a switchover's handover),
// soloMark.mu across one write to the fencing authority.
package chatcore
