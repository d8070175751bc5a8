package chatpb

// SendBatchHeader is the metadata key by which each side of a SendStream
// announces that it takes batches: a client sets it (value "1") in the
// stream's request metadata to receive results with more; a core sets it
// in the stream's response header, sent as the stream opens, to receive
// requests with more. A side that did not announce it gets one send or one
// result per stream message, as before batches.
const SendBatchHeader = "hachat-send-batch"
