// Package replica is the replication between the two cores of a pair, both
// sides of it, with the core behind interfaces (as hashicorp/raft keeps
// its FSM and Transport behind interfaces):
//
//   - the primary's side, Replicator: it serves the backup's Replicate
//     stream (hello, snapshot, live tail), sends each committed event and
//     waits for the backup's acknowledgement of it (SendToBackup, then
//     Copy.Wait, which a caller may stop to take the copy elsewhere too
//     while the backup resyncs). Queued
//     messages go out as ReplicaBatch runs (group commit) when the
//     backup's hello asked for batches; acknowledgements are cumulative,
//     one per batch. Save progress gathered every 50 ms goes as one
//     SaveProgressBatch to a backup whose hello asked for progress
//     batches, as a SaveProgress per session to an older one
//     (FlushProgress). It reaches the core only through Core (snapshot the
//     sessions onto a link, step down, a backup is in sync) and a session
//     only through Session (which link holds it, its save progress).
//   - the backup's side, Applier: it admits each message of the stream
//     (an epoch older than the newest known is a fenced primary) and
//     applies snapshots, events, batches and save progress to a Table (look
//     up, start, put, drop the sessions the snapshot lacked, commit an
//     event) whose sessions it sees as Entry.
//
// The wire protocol is chatpb's Replication service; this package does not
// import the core (package chatcore), and its tests run without it.
//
// Lock order inside the package: Replicator.mu and Link.mu are never held
// together; Replicator.progressMu is a leaf. The core's locks (a session's
// append lock, held by the caller of SendToBackup and Link.Hold) are
// outside every lock of this package.
package replica
