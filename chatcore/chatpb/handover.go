package chatpb

// HandedOverMessage is the message of the UNAVAILABLE status a core answers
// for a while after it handed the primary role over at a switchover: to the
// calls it held during the drain, to those arriving on a connection that
// still leads to it, and as the end of the streams it closed. The new
// primary has claimed the role by then, so a client retries at once, not
// after a backoff: on the next target when it has several, else on a new
// connection once its sidecar has moved the old one (chatclient).
const HandedOverMessage = "this chat core handed the primary role over at a switchover: retry on a new connection"
