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
package chatcore
