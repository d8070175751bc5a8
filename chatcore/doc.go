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
//     becomePrimary, stepDown) and failover.go, follower.go decide when.
//   - Fencer (fencer.go, etcdfencer.go): where epochs and the primary's
//     lease live (etcd, or UCS through StoreFencer).
//   - replicator (replication.go: primary side, the batched stream with
//     acknowledgements, reaching the core through replicatorCore) and
//     applier (applier.go: backup side, reaching the core through
//     applierCore); follower.go runs the backup's stream and decides when
//     the primary is dead.
//   - second copy in UCS (solo.go: ucsCopy saves an event while the backup
//     is away, after soloMark recorded the solo mark).
//   - saver (saver.go, batch.go): transcript saves behind TranscriptStore
//     (store.go; records in package transcript).
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
//	         of health, background, replicator and link, all leaves here)
//	    -> session.mu (the log, subscribers, save bookkeeping; held briefly)
//	      -> Core.mu (the sessions map and the live count)
//
// Everything else is a leaf, never held while taking another of ours: the
// saver's queue (saver.mu), its trouble counter, the replicator's link
// pointer (replicator.mu), its save-progress queue (replicator.progressMu)
// and each link's queue (link.mu, never held with replicator.mu),
// watchers, tombstones, background, restoreMu, peerMu, metaMu, refuteMu,
// adoptions.mu (the adopted pairs). The role State's hot readers
// (IsPrimary, Epoch, Draining, Unmerged) are atomics and take no lock, so
// the append path never waits for a transition. Held across network calls:
// inflight and appendMu across a second copy (inflight exclusively across a
// switchover's handover), soloMark.mu across one write to the fencing authority.
package chatcore
